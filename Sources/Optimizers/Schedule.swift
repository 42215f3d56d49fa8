import RealModule

/// A learning-rate schedule over the step index t = 0, 1, 2, ...
public enum Schedule: Sendable, Equatable, CustomStringConvertible {
    /// eta_t = eta
    case constant
    /// eta_t = eta / sqrt(t + 1): the SGD analysis's decay (docs/theory.md)
    case inverseSquareRoot
    /// eta_t = eta * r^t: with r = (1 - lambda eta)^-2 and base eta / (1 - lambda eta), plain GD on an
    /// SI loss follows GD with weight decay lambda (docs/theory.md)
    case exponential(Double)

    /// `const`, `invsqrt` or `exp:R` with R a finite positive factor per step.
    public init?(name: String) {
        switch name {
        case "const", "constant": self = .constant
        case "invsqrt": self = .inverseSquareRoot
        default:
            guard name.hasPrefix("exp:"), let r = Double(name.dropFirst(4)), r.isFinite, r > 0 else { return nil }
            self = .exponential(r)
        }
    }

    public static let names = ["const", "invsqrt", "exp:R"]

    public func rate(base: Double, step t: Int) -> Double {
        switch self {
        case .constant: base
        case .inverseSquareRoot: base / Double(t + 1).squareRoot()
        case let .exponential(r): base * Double.pow(r, Double(t))
        }
    }

    public var description: String {
        switch self {
        case .constant: "const";
        case .inverseSquareRoot: "invsqrt"
        case let .exponential(r): "exp:\(r)"
        }
    }
}
