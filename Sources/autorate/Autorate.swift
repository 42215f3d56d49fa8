import ArgumentParser

@main
struct Autorate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "autorate",
        abstract: "Data-parallel training of batch-normalized networks over MPI with the scale-invariant SGD update.",
        discussion: """
            Run under mpirun for several ranks (see launch/train), or directly for one rank.
            Scale-invariant (SI) parameters, the weights feeding a BN layer, train with --lr-si; any
            fixed value works (Arora, Li & Lyu, ICLR 2019). Scale-variant (SV) ones use --lr-sv.
            """,
        subcommands: [Train.self, Bench.self, PlotScaling.self, Repro.self, Export.self],
        defaultSubcommand: Train.self
    )
}
