import CKernels
import Layers
import TensorCore
import XCTest

/// Winograd F(2x2, 3x3) against the direct convolution in Double, on every instruction set this CPU
/// has, for forward, input gradient and weight gradient.
///
/// Tolerance, per result, relative to the sum of the magnitudes of its terms, S. A direct fp32 sum
/// of n products errs by at most about n * eps * S (eps = 2^-24). Winograd adds the transforms: a
/// transformed input is a +-1 combination of up to 2 x 2 inputs, a transformed filter value one of
/// 3 x 3 weights with coefficients up to 1/2 per axis, and the output combines up to 3 x 3
/// products, so in the worst case the rounding of the transformed terms is up to 81 times the
/// direct bound: |error| <= 81 * (K + 2) * eps * S, K the depth of the products (Cin for the
/// output, Cout for the input gradient, the tiles summed for the weight gradient). On random data
/// the measured errors stay below 1 * (K + 2) * eps * S; the test allows 8 times that, which still
/// fails for a transform coefficient off by 1e-4 (checked by perturbing one), let alone a wrong one.
final class WinogradTests: XCTestCase {
    typealias Geometry = ConvolutionTests.Geometry

    /// 3x3, stride 1, padding 1: odd and even sizes, images of one row or column, one tile or fewer,
    /// a channel count past the kernels' 256-channel border block, and 17x17 images (81 tiles: a
    /// batch of 5 takes two chunks of images, so chunks start past tile 0 and the weight gradient
    /// adds up over chunks).
    static let geometries = [
        Geometry(height: 7, width: 5, inChannels: 3, outChannels: 4, kernel: 3, stride: 1, padding: 1),
        Geometry(height: 6, width: 8, inChannels: 17, outChannels: 18, kernel: 3, stride: 1, padding: 1),
        Geometry(height: 1, width: 1, inChannels: 2, outChannels: 3, kernel: 3, stride: 1, padding: 1),
        Geometry(height: 2, width: 3, inChannels: 5, outChannels: 2, kernel: 3, stride: 1, padding: 1),
        Geometry(height: 1, width: 9, inChannels: 4, outChannels: 4, kernel: 3, stride: 1, padding: 1),
        Geometry(height: 3, width: 3, inChannels: 300, outChannels: 7, kernel: 3, stride: 1, padding: 1),
        Geometry(height: 17, width: 17, inChannels: 5, outChannels: 6, kernel: 3, stride: 1, padding: 1),
    ]
    static let batch = 5

    /// The instruction sets to run: every one this CPU supports ("baseline" is the only table off x86).
    static var instructionSets: [String] {
        let original = String(cString: ak_kernel_isa())
        defer { _ = ak_kernel_force(original) }
        let names: [String] = ["avx512", "avx2", "sse2", "baseline"]
        let all = names.filter { ak_kernel_force($0) == 1 }
        precondition(!all.isEmpty, "no kernel table accepted: ak_kernel_force and this list disagree")
        return all
    }

    /// The allowed error of a result of products of depth `depth` whose terms' magnitudes sum to `magnitude`.
    static func bound(depth: Int, magnitude: Double) -> Double {
        8 * Double(depth + 2) * Double(Float.ulpOfOne / 2) * magnitude
    }

    func testForwardAndGradientsMatchDirectConvolution() {
        let original = String(cString: ak_kernel_isa())
        defer { _ = ak_kernel_force(original) }
        for isa in Self.instructionSets {
            XCTAssertEqual(ak_kernel_force(isa), 1)
            var rng = SplitMix64(seed: 71)
            for g in Self.geometries {
                let what = "\(g) on \(isa)"
                let f = ConvolutionTests.Fixture(g, batch: Self.batch, algorithm: .winograd, rng: &rng)
                let tiles = Self.batch * ((g.height + 1) / 2) * ((g.width + 1) / 2)
                f.y.storage.all.update(repeating: .nan)  // every output must be written
                f.conv.forward(f.x.matrix, f.y.matrix, f.p)
                let want = ConvolutionTests.directConvolution(f)
                for j in 0..<want.values.count {
                    let err = abs(Double(f.y[j]) - want.values[j])
                    XCTAssertLessThanOrEqual(
                        err, Self.bound(depth: g.inChannels, magnitude: want.magnitudes[j]), "y[\(j)], \(what)")
                }

                let r = OwnedMatrix(rows: f.y.rows, cols: f.y.cols, normal: &rng)
                let dx = OwnedMatrix(rows: f.x.rows, cols: f.x.cols)
                f.p.gradients.all.update(repeating: .nan)
                dx.storage.all.update(repeating: .nan)
                f.conv.backward(f.x.matrix, r.matrix, dx.matrix, f.p, accumulating: false)
                let direct = ConvolutionTests.directGradients(f, r)
                let dw = f.p.gradient(f.conv.weight)
                for j in 0..<dw.count {
                    XCTAssertLessThanOrEqual(
                        abs(Double(dw[j]) - direct.dw[j]), Self.bound(depth: tiles, magnitude: direct.dwMagnitude[j]) + 1e-30,
                        "dW[\(j)], \(what)")
                }
                for j in 0..<dx.storage.count {
                    XCTAssertLessThanOrEqual(
                        abs(Double(dx[j]) - direct.dx[j]),
                        Self.bound(depth: g.outChannels, magnitude: direct.dxMagnitude[j]) + 1e-30,
                        "dx[\(j)], \(what)")
                }

                // accumulating adds to the gradient (the residual sum into dx is checked by the
                // Winograd ResNets against finite differences, ConvNetTests)
                let before = f.p.gradient(f.conv.weight).map { $0 }
                f.conv.backward(f.x.matrix, r.matrix, nil, f.p, accumulating: true)
                let twice = f.p.gradient(f.conv.weight)
                for j in 0..<twice.count {
                    XCTAssertEqual(Double(twice[j]), 2 * Double(before[j]), accuracy: 1e-5 * (abs(Double(before[j])) + 1))
                }
            }
        }
    }

    /// The choice made when none is asked for: Winograd for 3x3/1/1 with 16 or more channels each way.
    func testDefaultAlgorithm() {
        XCTAssertEqual(Conv2d.defaultAlgorithm(kernel: 3, stride: 1, padding: 1, inChannels: 32, outChannels: 64), .winograd)
        XCTAssertEqual(Conv2d.defaultAlgorithm(kernel: 3, stride: 1, padding: 1, inChannels: 3, outChannels: 32), .im2col)
        XCTAssertEqual(Conv2d.defaultAlgorithm(kernel: 3, stride: 2, padding: 1, inChannels: 32, outChannels: 64), .im2col)
        XCTAssertEqual(Conv2d.defaultAlgorithm(kernel: 1, stride: 1, padding: 0, inChannels: 32, outChannels: 64), .im2col)
    }
}
