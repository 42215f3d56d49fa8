#if canImport(Glibc)
    import Glibc
#endif
import Synchronization

/// One memory segment that every rank of a group on one node maps, cut into one slice per rank and,
/// when asked for, common parts after the slices (one memory for all ranks): ranks read each
/// other's slices in place, without a message or a copy through MPI's buffers.
/// The segment is a POSIX shared-memory object that rank 0 creates and unlinks as soon as every
/// rank has mapped it (nothing is left behind when a rank dies later, and unmapping is local: a
/// release needs no collective, unlike `MPI_Win_free`); each rank reserves its own slice in full,
/// and its 1/P piece of every common part.
///
/// Reads of another rank's slice must be ordered after its writes by a blocking collective between
/// them, with `fence` on both sides of it.
public final class NodeSharedMemory: @unchecked Sendable {
    // @unchecked Sendable: the mapping is fixed; who writes which bytes when is the caller's protocol.
    public let ranks: Int
    public let rank: Int
    /// The bytes of each rank's slice (a multiple of the 2 MiB alignment).
    public let bytesPerRank: Int
    /// The number of common parts, and the bytes of each (a multiple of the alignment).
    public let commonParts: Int
    public let bytesPerPart: Int
    private let base: UnsafeMutableRawPointer
    private let totalBytes: Int

    fileprivate init(base: UnsafeMutableRawPointer, ranks: Int, rank: Int, bytesPerRank: Int, commonParts: Int, bytesPerPart: Int)
    {
        self.base = base
        self.ranks = ranks
        self.rank = rank
        self.bytesPerRank = bytesPerRank
        self.commonParts = commonParts
        self.bytesPerPart = bytesPerPart
        totalBytes = ranks * bytesPerRank + commonParts * bytesPerPart
    }

    deinit { munmap(base, totalBytes) }

    /// The start of rank `r`'s slice.
    public func slice(of r: Int) -> UnsafeMutableRawPointer {
        precondition((0..<ranks).contains(r), "rank \(r) has no slice among \(ranks)")
        return base + r * bytesPerRank
    }

    /// The start of common part `i` (the parts follow the slices).
    public func commonPart(_ i: Int) -> UnsafeMutableRawPointer {
        precondition((0..<commonParts).contains(i), "common part \(i) of \(commonParts)")
        return base + ranks * bytesPerRank + i * bytesPerPart
    }

    /// Slices are aligned to this (a huge page, where the system backs shared memory with them).
    public static let alignment = 2 << 20

    /// A full memory fence: this rank's writes before it are visible to a rank that reads after a
    /// collective that follows it.
    public static func fence() { atomicMemoryFence(ordering: .sequentiallyConsistent) }
}

/// Why the shared segment could not be set up, on the rank that says so.
public struct SharedMemoryError: Error, CustomStringConvertible {
    public let call: String
    public let errno: Int32
    public let bytes: Int
    public let rank: Int
    public var description: String {
        let reason = errno == 0 ? "another rank failed" : String(cString: strerror(errno))
        return "node shared memory: \(call) of \(bytes) bytes failed on rank \(rank): \(reason)"
    }
}

extension Communicator {
    /// Collective: maps one shared segment of `bytesPerRank` per rank and, after them,
    /// `commonParts` parts of `bytesPerPart` each that all ranks share (each rounded up to
    /// `NodeSharedMemory.alignment`). Each rank reserves its slice and the r-th of P equal pieces
    /// of every common part, so that a rank that works on that piece finds its pages on its own
    /// NUMA node. Every rank of the group must be on this node. Throws `SharedMemoryError` on every
    /// rank when any rank fails (so none is left waiting).
    public func mapNodeSharedMemory(bytesPerRank: Int, commonParts: Int = 0, bytesPerPart: Int = 0) throws -> NodeSharedMemory {
        precondition(
            bytesPerRank >= 0 && commonParts >= 0 && bytesPerPart >= 0,
            "a shared slice of \(bytesPerRank) bytes and \(commonParts) x \(bytesPerPart) in common")
        let align = NodeSharedMemory.alignment
        let slice = Swift.max(1, (bytesPerRank + align - 1) / align) * align
        let part = (bytesPerPart + align - 1) / align * align
        let common = part * commonParts
        let (slices, overflow) = slice.multipliedReportingOverflow(by: size)
        let (total, overflowCommon) = slices.addingReportingOverflow(common)
        precondition(!overflow && !overflowCommon, "a shared segment of \(size) x \(slice) + \(common) bytes")
        // rank 0 creates the object and sends its name, with shm_open's errno (0: none)
        var header = [UInt8](repeating: 0, count: 72)
        var name = ""
        if rank == 0 {
            name = "/autorate-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            let fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0o600)
            let code = fd < 0 ? Glibc.errno : 0
            if fd >= 0 { close(fd) }
            withUnsafeBytes(of: code.littleEndian) { header.replaceSubrange(0..<4, with: $0) }
            header.replaceSubrange(8..<(8 + name.utf8.count), with: name.utf8)
        }
        // the name leaves the namespace however this ends: by then every rank has opened it, or failed
        defer { if rank == 0 { shm_unlink(name) } }
        try broadcast(&header, root: 0)
        let created = header[0..<4].withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(as: Int32.self)) }
        name = String(decoding: header[8...].prefix { $0 != 0 }, as: UTF8.self)
        if created != 0 {
            throw SharedMemoryError(call: "shm_open \(name)", errno: rank == 0 ? created : 0, bytes: total, rank: rank)
        }
        // each rank reserves its own slice in full and its pieces of the common region (its pages
        // then come from its own NUMA node, and a full /dev/shm is an error here, not a SIGBUS at
        // first touch), then maps the whole segment
        var mapped: UnsafeMutableRawPointer? = nil
        var failure: (call: String, errno: Int32, bytes: Int)? = nil
        let fd = shm_open(name, O_RDWR, 0)
        if fd < 0 {
            failure = ("shm_open \(name)", Glibc.errno, total)
        } else {
            var regions = [(offset: rank * slice, bytes: slice)]
            let page = Int(sysconf(Int32(_SC_PAGESIZE)))
            // this rank's piece of every common part, cut at pages
            let from = part * rank / size / page * page, to = rank == size - 1 ? part : part * (rank + 1) / size / page * page
            for i in 0..<commonParts where to > from { regions.append((slices + i * part + from, to - from)) }
            for region in regions where failure == nil {
                // posix_fallocate returns the error instead of setting errno
                let reserved = posix_fallocate(fd, off_t(region.offset), off_t(region.bytes))
                if reserved != 0 { failure = ("posix_fallocate \(name)", reserved, region.bytes) }
            }
            if failure == nil {
                let address = mmap(nil, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                if address == MAP_FAILED { failure = ("mmap \(name)", Glibc.errno, total) } else { mapped = address }
            }
            close(fd)
        }
        let failedRanks: Int
        do {
            failedRanks = try allreduce(failure == nil ? 0 : 1, .sum)
        } catch {
            if let mapped { munmap(mapped, total) }
            throw error
        }
        guard failedRanks == 0, let mapped else {
            if let mapped { munmap(mapped, total) }
            throw SharedMemoryError(
                call: failure?.call ?? "mmap \(name)", errno: failure?.errno ?? 0, bytes: failure?.bytes ?? total, rank: rank)
        }
        return NodeSharedMemory(
            base: mapped, ranks: size, rank: rank, bytesPerRank: slice, commonParts: commonParts, bytesPerPart: part)
    }
}
