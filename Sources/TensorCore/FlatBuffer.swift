#if canImport(Glibc)
    import Glibc
#endif

/// A fixed-size, manually allocated Float buffer with a stable address (until `exchangeStorage`):
/// safe to hand to BLAS and to in-flight MPI operations (a Swift Array could move under
/// copy-on-write). Zero-initialized, 64-byte aligned (one cache line, one AVX-512 vector); buffers
/// of 2 MiB or more are 2 MiB aligned and marked for transparent huge pages (the system's default
/// here is `madvise`), to spare the per-parameter passes, which are bound by memory, most TLB
/// misses.
public final class FlatBuffer: @unchecked Sendable {
    // @unchecked Sendable: the buffer is written by one thread at a time (the training thread);
    // the type is shared only to hand the same memory to the communicator.
    public private(set) var storage: UnsafeMutableBufferPointer<Float>
    /// What keeps `storage` alive when this buffer did not allocate it (`move(into:keeper:)`);
    /// nil: allocated here, freed in deinit. Travels with the storage in `exchangeStorage`.
    private var keeper: AnyObject?

    public init(count: Int) {
        precondition(count >= 0, "FlatBuffer count must be non-negative, got \(count)")
        let bytes = Swift.max(count, 1) * MemoryLayout<Float>.stride
        let huge = 2 << 20
        let alignment = bytes >= huge ? huge : 64
        var raw: UnsafeMutableRawPointer? = nil
        guard posix_memalign(&raw, alignment, bytes) == 0, let raw else {
            fatalError("out of memory allocating \(bytes) bytes")
        }
        if bytes >= huge { _ = madvise(raw, bytes, MADV_HUGEPAGE) }
        storage = UnsafeMutableBufferPointer(
            start: raw.bindMemory(to: Float.self, capacity: Swift.max(count, 1)),
            count: Swift.max(count, 1))
        storage.initialize(repeating: 0)
        self.count = count
    }

    /// A buffer over `memory`, which `keeper` owns and keeps alive: nothing is allocated, copied
    /// or zeroed (`memory` must be as aligned as a BLAS operand needs).
    public init(wrapping memory: UnsafeMutableBufferPointer<Float>, keeper: AnyObject) {
        precondition(memory.baseAddress != nil, "wrapping a buffer without memory")
        storage = memory
        self.keeper = keeper
        count = memory.count
    }

    public let count: Int

    deinit { if keeper == nil { free(storage.baseAddress) } }

    /// Copies the elements into `memory` (at least `count` elements, as aligned as a BLAS
    /// operand needs) and uses it from now on, keeping `keeper` (which owns it) alive; the memory
    /// this buffer held is freed. Pointers taken before are stale.
    public func move(into memory: UnsafeMutableBufferPointer<Float>, keeper: AnyObject) {
        precondition(memory.count >= storage.count, "moving \(storage.count) elements into \(memory.count)")
        let target = UnsafeMutableBufferPointer(rebasing: memory[0..<storage.count])
        _ = target.update(fromContentsOf: storage)
        if self.keeper == nil { free(storage.baseAddress) }
        storage = target
        self.keeper = keeper
    }

    public var pointer: UnsafeMutablePointer<Float> { storage.baseAddress! }

    /// Swaps the memory of two buffers of one size. Pointers taken from either before are then
    /// into the other: take them afresh after (no MPI operation may be in flight on either).
    public func exchangeStorage(with other: FlatBuffer) {
        precondition(count == other.count, "exchanging the storage of buffers of \(count) and \(other.count) elements")
        swap(&storage, &other.storage)
        swap(&keeper, &other.keeper)
    }

    /// The elements `range` as a buffer pointer into this storage.
    public func slice(_ range: Range<Int>) -> UnsafeMutableBufferPointer<Float> {
        precondition(
            range.lowerBound >= 0 && range.upperBound <= count,
            "slice \(range) is outside a buffer of \(count) elements")
        return UnsafeMutableBufferPointer(start: pointer + range.lowerBound, count: range.count)
    }

    /// All elements.
    public var all: UnsafeMutableBufferPointer<Float> { slice(0..<count) }

    public var array: [Float] { Array(all) }
}
