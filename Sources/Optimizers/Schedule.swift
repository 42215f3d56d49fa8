import RealModule

/// A learning-rate schedule over the step index t = 0, 1, 2, ...
public enum Schedule: Sendable, Equatable, CustomStringConvertible {
    /// eta_t = eta
    case constant
    /// eta_t = eta / sqrt(t + 1): the SGD analysis's decay (paper.md §3)
    case inverseSquareRoot

    public init?(name: String) {
        switch name {
        case "const", "constant": self = .constant
        case "invsqrt": self = .inverseSquareRoot
        default: return nil
        }
    }

    public static let names = ["const", "invsqrt"]

    public func rate(base: Double, step t: Int) -> Double {
        switch self {
        case .constant: base
        case .inverseSquareRoot: base / Double(t + 1).squareRoot()
        }
    }

    public var description: String {
        switch self {
        case .constant: "const";
        case .inverseSquareRoot: "invsqrt"
        }
    }
}
