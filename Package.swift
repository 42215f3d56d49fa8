// swift-tools-version:6.0
import PackageDescription

/// Module graph (arrows point one way):
///   autorate -> {Benchmarks, Reproduction} -> Training -> {Layers, Optimizers, Data, Collectives} -> TensorCore -> COpenBLAS
///   Collectives -> CMPI            (the only module that talks to MPI)
///   Data -> CZlib                  (gzip-compressed MNIST files, deflated .npz entries)
///   Data -> CPNG, CTurboJPEG       (--data folder:DIR images: libpng, libjpeg-turbo)
///   Layers -> CKernels             (C kernels with run-time CPU dispatch)

let package = Package(
    name: "autorate",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "autorate", targets: ["autorate"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-numerics", from: "1.0.0"),
    ],
    targets: [
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c", providers: [.apt(["libopenmpi-dev"])]),
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CTurboJPEG", pkgConfig: "libturbojpeg", providers: [.apt(["libturbojpeg0-dev"])]),

        .target(name: "Collectives", dependencies: ["CMPI"]),
        .target(
            name: "TensorCore",
            dependencies: [
                "COpenBLAS", .product(name: "RealModule", package: "swift-numerics"),
            ]),
        // The hot loops that must use the CPU's widest vectors: built per instruction set, chosen at run time.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3"])]),
        .target(name: "Layers", dependencies: ["TensorCore", "CKernels"]),
        .target(name: "Optimizers", dependencies: ["TensorCore", "Layers"]),
        .target(name: "Data", dependencies: ["CZlib", "CPNG", "CTurboJPEG", "TensorCore"]),
        .target(
            name: "Training",
            dependencies: [
                "Collectives", "TensorCore", "Layers", "Optimizers", "Data",
                .product(name: "RealModule", package: "swift-numerics"),
            ]),
        // Tools apart from the library: the throughput benchmark and the paper's reproduction.
        .target(name: "Plots", dependencies: [.product(name: "RealModule", package: "swift-numerics")]),
        .target(
            name: "Benchmarks", dependencies: ["Training", "Plots", "Collectives", "Data", "Layers", "TensorCore", "CKernels"]),
        .target(
            name: "Reproduction",
            dependencies: [
                "Training", "Plots", "Collectives", "Data", "Layers", "Optimizers", "TensorCore",
                .product(name: "RealModule", package: "swift-numerics"),
            ]),
        .executableTarget(
            name: "autorate",
            dependencies: [
                "Training", "Benchmarks", "Reproduction", "Collectives", "Data", "Layers", "Optimizers", "TensorCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        // Launched under mpirun by the tests: exercises every collective on real ranks.
        .executableTarget(
            name: "collectives-check", dependencies: ["Collectives"],
            path: "Sources/CollectivesCheck"),
        // Fuzz targets for the file parsers (launch/fuzz). Built plainly they replay files given as
        // arguments; built by launch/fuzz (--sanitize=fuzzer -Xswiftc -DFUZZING, own build directory)
        // they are libFuzzer binaries.
        .target(name: "FuzzSupport", dependencies: ["Data"]),
        .executableTarget(name: "fuzz-idx", dependencies: ["Data", "FuzzSupport"], path: "Sources/FuzzIDX"),
        .executableTarget(name: "fuzz-cifar10", dependencies: ["Data", "FuzzSupport"], path: "Sources/FuzzCIFAR10"),
        .executableTarget(name: "fuzz-safetensors", dependencies: ["Data", "FuzzSupport"], path: "Sources/FuzzSafeTensors"),
        .executableTarget(name: "fuzz-checkpoint", dependencies: ["Data", "FuzzSupport"], path: "Sources/FuzzCheckpoint"),
        .executableTarget(name: "fuzz-npy", dependencies: ["Data", "FuzzSupport"], path: "Sources/FuzzNPY"),
        .executableTarget(name: "fuzz-image-cache", dependencies: ["Data", "FuzzSupport"], path: "Sources/FuzzImageCache"),

        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore"]),
        .testTarget(name: "LayersTests", dependencies: ["Layers", "TensorCore", "CKernels"]),
        .testTarget(name: "OptimizersTests", dependencies: ["Optimizers", "Layers", "TensorCore"]),
        .testTarget(name: "DataTests", dependencies: ["Data", "TensorCore", "CPNG", "CTurboJPEG"]),
        .testTarget(
            name: "TrainingTests", dependencies: ["Training", "Collectives", "Layers", "Optimizers", "TensorCore", "Data"]),
        .testTarget(name: "ToolsTests", dependencies: ["Benchmarks", "Reproduction", "Plots", "Training"]),
        .testTarget(name: "EndToEndTests", dependencies: []),
    ]
)
