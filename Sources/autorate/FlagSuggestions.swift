import ArgumentParser

/// What people type from other trainers, and what to use here: checked before parsing, so that
/// `--lr` gets `--lr-si`/`--lr-sv` rather than the parser's nearest spelling (`--bn`), and
/// `autorate trian` gets `train` rather than "unexpected argument".
enum FlagSuggestions {
    static let subcommands = ["train", "eval", "export", "bench", "plot-scaling", "repro"]

    static let flags: [String: String] = [
        "--lr": "--lr-si (the scale-invariant weights: any fixed value works) and --lr-sv (the scale-variant ones: tune this)",
        "--learning-rate": "--lr-si and --lr-sv",
        "--batch-size": "--global-batch (samples per step over all ranks)",
        "--batch": "--global-batch (samples per step over all ranks)",
        "--bs": "--global-batch (samples per step over all ranks)",
        "--epoch": "--epochs",
        "--iterations": "--steps",
        "--iters": "--steps",
        "--wd": "--weight-decay-si and --weight-decay-sv",
        "--weight-decay": "--weight-decay-si and --weight-decay-sv",
        "--np": "mpirun -np N autorate ... (or NP=N launch/train)",
        "--workers": "mpirun -np N autorate ... (or NP=N launch/train)",
    ]

    static func check(_ arguments: [String]) throws {
        if let first = arguments.first, !first.hasPrefix("-"), !subcommands.contains(first) {
            let nearest = subcommands.min { distance($0, first) < distance($1, first) }!
            if distance(nearest, first) <= 2 {
                throw ValidationError(
                    "'\(first)' is not a command; did you mean '\(nearest)'? Commands: \(subcommands.joined(separator: ", ")).")
            }
        }
        for argument in arguments {
            let flag = String(argument.split(separator: "=", maxSplits: 1).first ?? "")
            if let instead = flags[flag] {
                throw ValidationError("\(flag) is not a flag of autorate; use \(instead).")
            }
        }
    }

    /// Levenshtein distance.
    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var previous = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var current = [i] + [Int](repeating: 0, count: b.count)
            for j in 1...max(b.count, 1) where !b.isEmpty {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }
}
