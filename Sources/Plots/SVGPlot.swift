import Foundation
import RealModule

/// A line chart written as SVG by the project itself (no plotting dependency, no display): title,
/// axis labels, linear or log axes with ticks, one colour per series, a legend, dashed reference lines.
public struct LinePlot: Sendable {
    public struct Series: Sendable {
        public var name: String
        public var points: [(x: Double, y: Double)]
        public var dashed = false
        public init(_ name: String, _ points: [(x: Double, y: Double)], dashed: Bool = false) {
            self.name = name
            self.points = points
            self.dashed = dashed
        }
    }
    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var logX = false
    public var logY = false
    /// x takes whole values only (rank counts): ticks at integers, never at 1.2.
    public var integerX = false
    public var series: [Series] = []

    public init(title: String, xLabel: String, yLabel: String, logX: Bool = false, logY: Bool = false) {
        self.title = title
        self.xLabel = xLabel
        self.yLabel = yLabel
        self.logX = logX
        self.logY = logY
    }

    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]

    public var svg: String {
        let width = 720.0, height = 420.0
        let left = 80.0, right = 230.0, top = 40.0, bottom = 60.0
        let plotW = width - left - right, plotH = height - top - bottom
        func tx(_ v: Double) -> Double? { logX ? (v > 0 ? Double.log10(v) : nil) : v }
        func ty(_ v: Double) -> Double? { logY ? (v > 0 ? Double.log10(v) : nil) : v }
        let finite = series.flatMap(\.points).compactMap { p -> (Double, Double)? in
            guard p.x.isFinite, p.y.isFinite, let x = tx(p.x), let y = ty(p.y) else { return nil }
            return (x, y)
        }
        var (x0, x1) = (finite.map(\.0).min() ?? 0, finite.map(\.0).max() ?? 1)
        var (y0, y1) = (finite.map(\.1).min() ?? 0, finite.map(\.1).max() ?? 1)
        if x1 - x0 < 1e-12 { x0 -= 0.5; x1 += 0.5 }
        if y1 - y0 < 1e-12 { y0 -= 0.5; y1 += 0.5 }
        let pad = (y1 - y0) * 0.05
        y0 -= pad
        y1 += pad
        func px(_ x: Double) -> Double { left + (x - x0) / (x1 - x0) * plotW }
        func py(_ y: Double) -> Double { top + plotH - (y - y0) / (y1 - y0) * plotH }
        var out = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(height))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(left + plotW / 2)" y="22" text-anchor="middle" font-size="15">\(escape(title))</text>
            <rect x="\(left)" y="\(top)" width="\(plotW)" height="\(plotH)" fill="none" stroke="#444"/>

            """
        let xTicks =
            integerX && !logX
            ? ticks(x0, x1, log: false).filter { abs($0.0 - $0.0.rounded()) < 1e-6 }.map {
                ($0.0.rounded(), String(Int($0.0.rounded())))
            }
            : ticks(x0, x1, log: logX)
        for (value, label) in xTicks {
            let x = px(value)
            out += "<line x1=\"\(x)\" y1=\"\(top)\" x2=\"\(x)\" y2=\"\(top + plotH)\" stroke=\"#ddd\"/>"
            out += "<text x=\"\(x)\" y=\"\(top + plotH + 16)\" text-anchor=\"middle\">\(label)</text>\n"
        }
        for (value, label) in ticks(y0, y1, log: logY) {
            let y = py(value)
            out += "<line x1=\"\(left)\" y1=\"\(y)\" x2=\"\(left + plotW)\" y2=\"\(y)\" stroke=\"#ddd\"/>"
            out += "<text x=\"\(left - 6)\" y=\"\(y + 4)\" text-anchor=\"end\">\(label)</text>\n"
        }
        out += "<text x=\"\(left + plotW / 2)\" y=\"\(height - 18)\" text-anchor=\"middle\">\(escape(xLabel))</text>\n"
        out +=
            "<text transform=\"translate(18,\(top + plotH / 2)) rotate(-90)\" text-anchor=\"middle\">\(escape(yLabel))</text>\n"
        for (k, s) in series.enumerated() {
            let colour = Self.palette[k % Self.palette.count]
            var path = "", pen = "M"
            for p in s.points {
                guard p.x.isFinite, p.y.isFinite, let x = tx(p.x), let y = ty(p.y) else {
                    pen = "M"
                    continue
                }
                path += "\(pen)\(round2(px(x))),\(round2(py(y))) "
                pen = "L"
            }
            let dash = s.dashed ? " stroke-dasharray=\"6,4\"" : ""
            out += "<path d=\"\(path)\" fill=\"none\" stroke=\"\(colour)\" stroke-width=\"1.8\"\(dash)/>\n"
            let ly = top + 12 + Double(k) * 18
            out +=
                "<line x1=\"\(left + plotW + 12)\" y1=\"\(ly)\" x2=\"\(left + plotW + 36)\" y2=\"\(ly)\" stroke=\"\(colour)\" stroke-width=\"2\"\(dash)/>"
            out += "<text x=\"\(left + plotW + 42)\" y=\"\(ly + 4)\">\(escape(s.name))</text>\n"
        }
        return out + "</svg>\n"
    }

    /// About 5 ticks: powers of ten on a log axis, round steps on a linear one.
    private func ticks(_ lo: Double, _ hi: Double, log: Bool) -> [(Double, String)] {
        if log {
            let first = Int(lo.rounded(.up)), last = Int(hi.rounded(.down))
            let every = Swift.max(1, (last - first + 1) / 6)
            return stride(from: first, through: last, by: every).map { (Double($0), "1e\($0)") }
        }
        let raw = (hi - lo) / 5, magnitude = Double.pow(10, Double.log10(raw).rounded(.down))
        let step = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= raw } ?? raw
        var v = (lo / step).rounded(.up) * step, result: [(Double, String)] = []
        while v <= hi + step * 1e-9 {
            result.append((v, format(v)))
            v += step
        }
        return result
    }

    private func format(_ v: Double) -> String {
        if v == 0 { return "0" }
        if abs(v) >= 1e4 || abs(v) < 1e-3 { return String(format: "%.0e", v) }
        return String(format: "%g", v)
    }
    private func round2(_ v: Double) -> String { String(format: "%.1f", v) }
    private func escape(_ s: String) -> String {
        s.replacingAll("&", "&amp;").replacingAll("<", "&lt;").replacingAll(">", "&gt;")
    }
}

extension String {
    public func replacingAll(_ target: String, _ replacement: String) -> String {
        split(separator: target, omittingEmptySubsequences: false).joined(separator: replacement)
    }
}
