import ArgumentParser
import Data
import Layers
import Optimizers
import Training

extension HeadKind: ExpressibleByArgument {}
extension EpsilonMode: ExpressibleByArgument {}
extension BatchNormSync: ExpressibleByArgument {}

extension Schedule: ExpressibleByArgument {
    public init?(argument: String) { self.init(name: argument) }
    public static var allValueStrings: [String] { names }
    public var defaultValueDescription: String { description }
}

/// Parses `--data`, naming what is accepted when it fails.
func parseData(_ text: String) throws -> DataSource {
    guard let source = DataSource(argument: text) else {
        throw ValidationError("--data \(text) is not accepted: use \(DataSource.accepted).")
    }
    return source
}

/// Parses comma-separated layer widths such as `784,512,512,10`, naming what is accepted when it fails.
func parseWidths(_ text: String, flag: String = "--widths") throws -> [Int] {
    let parts = text.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: " ")) }
    guard parts.count >= 2, parts.allSatisfy({ ($0 ?? 0) > 0 }) else {
        throw ValidationError(
            "\(flag) \(text) is not accepted: use at least two comma-separated positive integers, 'inputs,hidden...,classes' (e.g. 784,512,512,10)."
        )
    }
    return parts.map { $0! }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: String) -> Substring {
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
