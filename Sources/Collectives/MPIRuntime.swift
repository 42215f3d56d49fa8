import CMPI
#if canImport(Glibc)
    import Glibc
#endif

/// The process's MPI environment: initialization, the world communicator, finalization.
///
/// `MPI_Init` may run only once per process and never after `MPI_Finalize`; `initialize` is
/// idempotent so that tests and the CLI can share it. Without `mpirun` the process is a valid
/// one-rank world (an MPI singleton).
public enum MPIRuntime {
    /// Initializes MPI once, asking for `threadLevel`, and checks what was granted.
    /// - Throws: `MPIRuntimeError.threadLevelNotGranted` when the library offers less.
    @discardableResult
    public static func initialize(threadLevel: ThreadLevel = .serialized) throws -> ThreadLevel {
        var finalized: Int32 = 0
        MPI_Finalized(&finalized)
        if finalized != 0 { throw MPIRuntimeError.alreadyFinalized }
        var initialized: Int32 = 0
        MPI_Initialized(&initialized)
        var provided: Int32 = 0
        if initialized != 0 {
            try check(MPI_Query_thread(&provided), "MPI_Query_thread", rank: -1)
        } else {
            // libnbc's default nonblocking allreduce of an in-place buffer is a binomial reduce then
            // broadcast, which moves every byte twice. Rabenseifner's (reduce-scatter + allgather)
            // is bandwidth-optimal in 2 log2(p) rounds, few enough to advance at layer boundaries;
            // libnbc falls back to its ring when a bucket has fewer elements than ranks. Measured
            // over TCP at 1 Gbit/s (MLP, 2 ranks): 1,092 samples/s binomial, 1,933 Rabenseifner,
            // 1,897-1,977 ring. A value the user set (mpirun --mca or the environment) wins.
            setenv("OMPI_MCA_coll_libnbc_iallreduce_algorithm", "3", 0)
            try check(MPI_Init_thread(nil, nil, Int32(mpiLevel(threadLevel)), &provided), "MPI_Init_thread", rank: -1)
        }
        let granted = level(fromMPI: Int(provided))
        if granted < threadLevel {
            throw MPIRuntimeError.threadLevelNotGranted(requested: threadLevel, granted: granted)
        }
        return granted
    }

    /// A private duplicate of `MPI_COMM_WORLD` whose errors are returned (and thrown) instead of
    /// aborting, so that every failure carries the function name and rank.
    public static func world() throws -> MPICommunicator {
        var comm: MPI_Comm? = nil
        try check(MPI_Comm_dup(cmpi_comm_world(), &comm), "MPI_Comm_dup", rank: -1)
        guard let comm else { fatalError("MPI_Comm_dup returned success and no communicator") }
        try check(MPI_Comm_set_errhandler(comm, cmpi_errors_return()), "MPI_Comm_set_errhandler", rank: -1)
        return try MPICommunicator(owning: comm)
    }

    /// Finalizes MPI if it is initialized and not finalized yet. Collective over the world.
    public static func finalize() {
        var initialized: Int32 = 0, finalized: Int32 = 0
        MPI_Initialized(&initialized)
        MPI_Finalized(&finalized)
        if initialized != 0 && finalized == 0 { MPI_Finalize() }
    }

    /// Open MPI's library version string, e.g. "Open MPI v4.1.4, ...".
    public static var libraryVersion: String {
        var buffer = [CChar](repeating: 0, count: Int(MPI_MAX_LIBRARY_VERSION_STRING) + 1)
        var length: Int32 = 0
        MPI_Get_library_version(&buffer, &length)
        return string(fromC: buffer).split(separator: ",").first.map(String.init) ?? ""
    }

    private static func mpiLevel(_ level: ThreadLevel) -> Int {
        switch level {
        case .single: Int(MPI_THREAD_SINGLE)
        case .funneled: Int(MPI_THREAD_FUNNELED)
        case .serialized: Int(MPI_THREAD_SERIALIZED)
        case .multiple: Int(MPI_THREAD_MULTIPLE)
        }
    }

    private static func level(fromMPI value: Int) -> ThreadLevel {
        switch value {
        case Int(MPI_THREAD_MULTIPLE): .multiple
        case Int(MPI_THREAD_SERIALIZED): .serialized
        case Int(MPI_THREAD_FUNNELED): .funneled
        default: .single
        }
    }
}

/// The one checker every MPI return code goes through.
@inline(__always)
func check(_ code: Int32, _ function: String, rank: Int) throws {
    guard code != MPI_SUCCESS else { return }
    throw MPIError(function: function, code: code, message: errorText(code), rank: rank)
}

func errorText(_ code: Int32) -> String {
    var buffer = [CChar](repeating: 0, count: Int(cmpi_max_error_string()) + 1)
    var length: Int32 = 0
    guard MPI_Error_string(code, &buffer, &length) == MPI_SUCCESS else { return "unknown MPI error" }
    return string(fromC: buffer)
}

func string(fromC buffer: [CChar]) -> String {
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}
