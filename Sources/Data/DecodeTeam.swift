/// The processes of one node that decode an image folder together (`ImageFolder.load`): rank r
/// decodes the files i with `i % size == r` into one shared cache file. `Data` knows no MPI; the
/// trainer passes a team over the node's MPI communicator, tests a simulated one.
public protocol DecodeTeam {
    /// This process's index in the team, `0 ..< size`.
    var rank: Int { get }
    /// The number of processes in the team (the ranks of one node).
    var size: Int { get }
    /// Collective: every member must call this, in the same order. True when every member passed
    /// true; it is also a barrier (no member returns before every member has called it).
    /// - Throws: when the communication itself fails.
    func allSucceeded(_ ok: Bool) throws -> Bool
}

/// A team of one process: decodes everything itself, and `allSucceeded` returns its argument.
public struct SoloDecodeTeam: DecodeTeam, Sendable {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public func allSucceeded(_ ok: Bool) throws -> Bool { ok }
}

/// What `DataSource.load` needs besides the source: the folder options and the node's team.
public struct DataLoadOptions {
    /// `--image-size`: resize every image of an image folder to this size (nil: all must match).
    public var imageSize: ImageSize?
    /// `--cache-dir`: where an image folder's decode cache goes (nil: beside the data).
    public var cacheDirectory: String?
    /// The processes of this node that share the decoding (one process by default).
    public var team: any DecodeTeam

    public init(imageSize: ImageSize? = nil, cacheDirectory: String? = nil, team: any DecodeTeam = SoloDecodeTeam()) {
        self.imageSize = imageSize
        self.cacheDirectory = cacheDirectory
        self.team = team
    }
}

/// An image size `HxW` as given to `--image-size` (`28x28`; a single `N` means `NxN`).
public struct ImageSize: Sendable, Equatable, CustomStringConvertible {
    public let height: Int
    public let width: Int
    /// The largest side accepted.
    public static let maximumSide = 16384
    public static let accepted = "HxW or N (NxN) with sides from 1 to \(maximumSide), such as 28x28 or 32"

    public init(height: Int, width: Int) {
        precondition(height > 0 && width > 0, "image sizes must be positive")
        self.height = height
        self.width = width
    }

    /// Parses `HxW` or `N`; nil for anything else (zero, signs, spaces, sides over `maximumSide`).
    public init?(argument: String) {
        let parts = argument.split(separator: "x", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2 else { return nil }
        var sides: [Int] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 5, part.utf8.allSatisfy({ (0x30...0x39).contains($0) }),
                let side = Int(part), side >= 1, side <= Self.maximumSide
            else { return nil }
            sides.append(side)
        }
        self.init(height: sides[0], width: sides.count == 2 ? sides[1] : sides[0])
    }

    public var description: String { "\(height)x\(width)" }
}
