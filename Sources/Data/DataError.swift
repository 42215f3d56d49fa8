/// A data file or directory that cannot be used, with the path and what was expected.
public struct DataError: Error, CustomStringConvertible, Sendable {
    public let path: String
    public let problem: String
    public init(path: String, _ problem: String) {
        self.path = path
        self.problem = problem
    }
    public var description: String { "\(path): \(problem)" }
}
