/// Which CPUs this binary's own loops were compiled for: any x86-64 (the default), or one CPU
/// (`AUTORATE_TARGET_CPU` in the launch scripts, which also defines `AUTORATE_ONE_CPU`), so that
/// a figure says which build measured it.
public enum BuildTarget {
    #if AUTORATE_ONE_CPU
        public static let portable = false
    #else
        public static let portable = true
    #endif

    /// "portable" or "one-cpu", as the bench's JSON records it.
    public static var name: String { portable ? "portable" : "one-cpu" }
}
