import ArgumentParser
import Collectives
import TensorCore
import Training

/// Runs `body` between MPI initialization and finalization, with BLAS pinned to `threads`.
///
/// Failure policy, so that no rank is ever left waiting:
/// - errors every rank sees alike (a `TrainingError` decided from reduced values) end every rank
///   cleanly with exit status 1, printed once by rank 0;
/// - any other error (an MPI failure, a fault on one rank) is printed by the failing rank, which
///   then aborts the whole job with `MPI_Abort`.
func withMPI(threads: Int, _ body: (Communicator, RankConsole) throws -> Void) throws {
    let communicator: Communicator
    do {
        try MPIRuntime.initialize(threadLevel: .serialized)
        communicator = try MPIRuntime.world()
    } catch {
        writeAll(2, "autorate: error: MPI could not start: \(error)\n")
        throw ExitCode(1)
    }
    BLAS.setThreads(threads)
    let console = RankConsole(program: "autorate", rank: communicator.rank, size: communicator.size)
    do {
        try body(communicator, console)
    } catch is AgreedFailure {
        MPIRuntime.finalize()
        throw ExitCode(1)
    } catch let error as TrainingError {
        // decided on reduced values: every rank throws the same error at the same point
        if communicator.isRoot { console.error("\(error)") }
        MPIRuntime.finalize()
        throw ExitCode(1)
    } catch {
        console.error("\(error)")
        if communicator.size > 1 { communicator.abort(code: 1) }
        MPIRuntime.finalize()
        throw ExitCode(1)
    }
    MPIRuntime.finalize()
}

/// Thrown on every rank once the ranks agreed that setup failed somewhere (already printed).
struct AgreedFailure: Error {}

/// Runs a setup step that does no communication on every rank, then agrees: if it failed on any
/// rank, the failing ranks print why and every rank stops cleanly, none left in a collective.
func agreeOnSetup<T>(_ communicator: Communicator, _ console: RankConsole, _ setup: () throws -> T) throws -> T {
    var result: T? = nil
    var message: String? = nil
    do { result = try setup() } catch { message = "\(error)" }
    let failures = try communicator.allreduce(message == nil ? 0 : 1, .sum)
    if failures > 0 {
        if let message { console.error(message) }
        if message == nil && communicator.isRoot {
            console.error("stopping: setup failed on \(failures) other rank(s), which printed why")
        }
        throw AgreedFailure()
    }
    return result!
}
