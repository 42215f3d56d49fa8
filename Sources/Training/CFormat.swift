#if canImport(Glibc)
    import Glibc
#endif

extension String {
    /// printf-style formatting of numbers without Foundation (%d, %f, %e with C semantics; pass
    /// strings by interpolation, they are not `CVarArg` here).
    public init(cFormat format: String, _ args: CVarArg...) {
        var buffer = [CChar](repeating: 0, count: 1024)
        _ = withVaList(args) { vsnprintf(&buffer, buffer.count, format, $0) }
        self = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
