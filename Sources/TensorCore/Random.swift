import RealModule

/// A small, fast, seedable generator (SplitMix64) so that every rank draws the same numbers from
/// the same seed, on every platform and Swift version.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A uniform Double in [0, 1).
    public mutating func uniform() -> Double { Double(next() >> 11) * 0x1p-53 }

    /// A standard normal sample (Box-Muller).
    public mutating func normal() -> Double {
        let u1 = Swift.max(uniform(), 0x1p-60), u2 = uniform()
        return (-2 * _log(u1)).squareRoot() * _cos(2 * Double.pi * u2)
    }

    /// A generator derived from several seeds (e.g. base seed, epoch) without correlation.
    public static func derived(_ parts: UInt64...) -> SplitMix64 {
        var g = SplitMix64(seed: 0x5EED)
        var mixed: UInt64 = 0
        for p in parts { g = SplitMix64(seed: g.next() ^ p); mixed = g.next() }
        return SplitMix64(seed: mixed)
    }
}

@inline(__always) func _log(_ x: Double) -> Double { Double.log(x) }
@inline(__always) func _cos(_ x: Double) -> Double { Double.cos(x) }
