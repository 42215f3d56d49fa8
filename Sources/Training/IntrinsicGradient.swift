import Optimizers

/// The intrinsic gradient norm of docs/theory.md, the quantity whose convergence the theory states:
/// `G_I^2 = sum over SI groups of ||w_i||^2 ||grad_{w_i} F||^2 + ||grad_g F||^2` (g: every SV
/// parameter), from the per-group monitors of one step (allreduced gradient: the global batch).
public enum IntrinsicGradient {
    public static func squared(_ monitors: [GroupMonitor]) -> Double {
        monitors.reduce(0) { sum, m in sum + (m.kind == .scaleInvariant ? m.norm2 * m.gradNorm2 : m.gradNorm2) }
    }
}
