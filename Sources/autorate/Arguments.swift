import ArgumentParser
import Data
import Layers
import Optimizers
import Training

extension DataSource: ExpressibleByArgument {
    public var defaultValueDescription: String { description }
}

extension HeadKind: ExpressibleByArgument {}
extension EpsilonMode: ExpressibleByArgument {}
extension BatchNormSync: ExpressibleByArgument {}

extension Schedule: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
    public static var allValueStrings: [String] { names }
    public var defaultValueDescription: String { description }
}

/// Comma-separated layer widths, e.g. `784,512,512,10`.
struct Widths: ExpressibleByArgument {
    let values: [Int]
    init?(argument: String) {
        let parts = argument.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: " ")) }
        guard parts.count >= 2, parts.allSatisfy({ ($0 ?? 0) > 0 }) else { return nil }
        values = parts.map { $0! }
    }
    var defaultValueDescription: String { values.map(String.init).joined(separator: ",") }
}

private extension Substring {
    func trimmingCharacters(in set: String) -> Substring {
        var s = self
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return s
    }
}

/// Rejects a numeric flag value before any work, naming the flag, the value and what is accepted.
func require(_ ok: Bool, _ flag: String, _ value: Any, _ accepted: String) throws {
    if !ok { throw ValidationError("\(flag) \(value) is not accepted: \(accepted).") }
}
