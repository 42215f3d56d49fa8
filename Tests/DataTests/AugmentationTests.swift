import Data
import TensorCore
import XCTest

final class AugmentationTests: XCTestCase {
    private func randomImage(_ shape: ImageShape, seed: UInt64) -> [Float] {
        var rng = SplitMix64(seed: seed)
        return (0..<shape.count).map { _ in Float(rng.uniform()) + 0.5 }  // never 0, so padding shows
    }

    private func augment(
        _ image: [Float], _ mode: Augmentation, shape: ImageShape, seed: UInt64 = 3, epoch: Int = 0, index: Int
    ) -> [Float] {
        var out = [Float](repeating: .nan, count: shape.count)
        image.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                mode.apply(src.baseAddress!, into: dst.baseAddress!, shape: shape, seed: seed, epoch: epoch, sampleIndex: index)
            }
        }
        return out
    }

    /// The augmented image computed pixel by pixel from the documented rule.
    private func expected(_ image: [Float], shape: ImageShape, dy: Int, dx: Int, flip: Bool) -> [Float] {
        let (h, w, c) = (shape.height, shape.width, shape.channels)
        var out = [Float](repeating: 0, count: shape.count)
        for y in 0..<h {
            for x in 0..<w {
                let sy = y + dy, sx = (flip ? w - 1 - x : x) + dx
                guard sy >= 0 && sy < h && sx >= 0 && sx < w else { continue }
                for k in 0..<c { out[(y * w + x) * c + k] = image[(sy * w + sx) * c + k] }
            }
        }
        return out
    }

    func testNoneCopies() {
        let shape = ImageShape(height: 5, width: 7, channels: 3)
        let image = randomImage(shape, seed: 1)
        XCTAssertEqual(augment(image, .none, shape: shape, index: 4), image)
        XCTAssertEqual(Augmentation(rawValue: "crop-flip"), .cropFlip)
        XCTAssertEqual(Augmentation(rawValue: "none"), Augmentation.none)
    }

    /// The same (seed, epoch, index) gives the same image; other indices, epochs or seeds other draws.
    func testCropFlipIsDeterministicPerSample() {
        let shape = ImageShape(height: 32, width: 32, channels: 3)
        let image = randomImage(shape, seed: 2)
        let a = augment(image, .cropFlip, shape: shape, index: 11)
        XCTAssertEqual(a, augment(image, .cropFlip, shape: shape, index: 11))
        let others = (0..<20).map { augment(image, .cropFlip, shape: shape, index: $0) }
        XCTAssertGreaterThan(Set(others.map { $0.map(\.bitPattern) }).count, 10, "indices draw different crops")
        let p = Augmentation.cropFlipParameters
        let draws = (0..<50).map { p(3, 0, $0) }
        XCTAssertTrue((0..<50).contains { p(3, 1, $0) != draws[$0] }, "the epoch changes the draws")
        XCTAssertTrue((0..<50).contains { p(4, 0, $0) != draws[$0] }, "the seed changes the draws")
    }

    /// Against a direct loop, on square and non-square images, 1 and 3 channels, many draws.
    func testCropFlipMovesPixelsExactly() {
        for shape in [ImageShape(height: 32, width: 32, channels: 3), ImageShape(height: 6, width: 9, channels: 1)] {
            let image = randomImage(shape, seed: 5)
            for epoch in 0..<2 {
                for index in 0..<100 {
                    let (dy, dx, flip) = Augmentation.cropFlipParameters(seed: 7, epoch: epoch, sampleIndex: index)
                    XCTAssertEqual(
                        augment(image, .cropFlip, shape: shape, seed: 7, epoch: epoch, index: index),
                        expected(image, shape: shape, dy: dy, dx: dx, flip: flip),
                        "\(shape) epoch \(epoch) index \(index) dy \(dy) dx \(dx) flip \(flip)")
                }
            }
        }
    }

    /// Draws cover -4...4 in both directions and flip about half the time; pixels shifted in are 0.
    func testParametersAndZeroPadding() {
        let draws = (0..<4000).map { Augmentation.cropFlipParameters(seed: 1, epoch: 2, sampleIndex: $0) }
        XCTAssertEqual(Set(draws.map(\.dy)), Set(-4...4))
        XCTAssertEqual(Set(draws.map(\.dx)), Set(-4...4))
        XCTAssertEqual(Double(draws.filter(\.flip).count) / 4000, 0.5, accuracy: 0.04)

        let shape = ImageShape(height: 8, width: 8, channels: 2)
        let ones = [Float](repeating: 1, count: shape.count)
        for index in 0..<200 {
            let (dy, dx, _) = draws[index]
            let out = augment(ones, .cropFlip, shape: shape, seed: 1, epoch: 2, index: index)
            let zeros = out.filter { $0 == 0 }.count, kept = out.filter { $0 == 1 }.count
            XCTAssertEqual(kept, (8 - abs(dy)) * (8 - abs(dx)) * 2, "index \(index)")
            XCTAssertEqual(zeros + kept, shape.count, "only copies and zeros")
        }
    }
}
