import TensorCore

/// How the BN denominator `sqrt(var + eps_c)` gets its epsilon (docs/theory.md).
public enum EpsilonMode: String, Sendable, CaseIterable {
    /// `eps_c = 0`: exactly scale-invariant; a channel with zero variance outputs beta.
    case zero
    /// `eps_c = eps * ||w_c||^2 * q`: `w_c` is the channel's incoming weight row, and q is the mean of
    /// gamma^2 + beta^2 of the BN whose ReLU output feeds that weight (1 for the first layer). eps_c
    /// then scales exactly like the variance when either the weight or the previous BN's
    /// (gamma, beta) is multiplied by c > 0, so both kinds of SI group stay exactly scale-invariant.
    case scaled
    /// `eps_c = eps`: the usual BN; breaks exact scale invariance when ||w|| is small.
    case standard
}

/// Batch-normalization settings shared by every BN layer of a network.
public struct BatchNormSettings: Sendable {
    public var epsilonMode: EpsilonMode
    public var epsilon: Double
    public var momentum: Double
    public init(epsilonMode: EpsilonMode = .scaled, epsilon: Double = 1e-5, momentum: Double = 0.1) {
        self.epsilonMode = epsilonMode
        self.epsilon = epsilon
        self.momentum = momentum
    }
}
