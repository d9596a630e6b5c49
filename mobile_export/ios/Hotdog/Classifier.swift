import CryptoKit
import ExecuTorch
import Foundation
import UIKit

/// Runs the bundled ExecuTorch program on a photo.
///
/// Input contract (see hotdog.json): uint8 RGB, NCHW, 1 x 3 x inputSize x inputSize. The app only
/// orients, resizes and crops; normalization (mean/std) and softmax are inside the .pte, so the output
/// is already probabilities in `labels` order.
final class Classifier {
    struct Prediction {
        let label: String
        let confidence: Float
        var isHotdog: Bool { label == PreprocessConstants.hotdogLabel }
    }

    enum ClassifierError: LocalizedError {
        case missingResource(String)
        case mismatch(String)
        case badImage(String)
        case badOutput

        var errorDescription: String? {
            switch self {
            case .missingResource(let name): return "\(name) is not in the app bundle: run `make export`, then rebuild."
            case .mismatch(let why): return "\(why) Run `make export` and rebuild the app."
            case .badImage(let why): return why
            case .badOutput: return "The model returned an unexpected output."
            }
        }
    }

    /// hotdog_xnnpack_fp32 is the program parity-tested against the served model; hotdog_xnnpack_int8
    /// is ~4x smaller, hotdog_coreml runs on the Neural Engine (iOS 17+).
    static let defaultModel = "hotdog_xnnpack_fp32"

    private let module: Module
    private let labels: [String]

    init(modelName: String = Classifier.defaultModel, bundle: Bundle = .main) throws {
        guard let modelURL = bundle.url(forResource: modelName, withExtension: "pte") else {
            throw ClassifierError.missingResource("\(modelName).pte")
        }
        guard let metadataURL = bundle.url(forResource: "hotdog", withExtension: "json") else {
            throw ClassifierError.missingResource("hotdog.json")
        }
        let metadata = try JSONDecoder().decode(Metadata.self, from: Data(contentsOf: metadataURL))
        // The constants compiled into the app must describe the .pte bundled with it.
        guard metadata.preprocess.input_size == PreprocessConstants.inputSize,
              metadata.preprocess.resize_size == PreprocessConstants.resizeSize,
              metadata.labels == PreprocessConstants.labels else {
            throw ClassifierError.mismatch("hotdog.json does not match PreprocessConstants.swift.")
        }
        guard let entry = metadata.programs.values.first(where: { $0.file == "\(modelName).pte" }) else {
            throw ClassifierError.mismatch("hotdog.json does not describe \(modelName).pte.")
        }
        let digest = SHA256.hash(data: try Data(contentsOf: modelURL, options: .mappedIfSafe))
            .map { String(format: "%02x", $0) }.joined()
        guard digest == entry.sha256 else {
            throw ClassifierError.mismatch("\(modelName).pte is not the file hotdog.json describes.")
        }
        module = Module(filePath: modelURL.path)
        try module.load("forward")
        labels = metadata.labels
    }

    func classify(_ image: UIImage) throws -> Prediction {
        let size = PreprocessConstants.inputSize
        let input = Tensor<UInt8>(try Self.inputPixels(image), shape: [1, 3, size, size])
        let outputs: [Value] = try module.forward(input)
        guard let output: Tensor<Float> = outputs.first?.tensor() else { throw ClassifierError.badOutput }
        let probabilities = output.scalars()
        guard probabilities.count == labels.count,
              let best = probabilities.indices.max(by: { probabilities[$0] < probabilities[$1] }) else {
            throw ClassifierError.badOutput
        }
        return Prediction(label: labels[best], confidence: probabilities[best])
    }

    /// Photo -> 3 * inputSize * inputSize bytes, planar R, G, B: model_src/preprocess.py's
    /// resize_and_crop + pil_to_uint8. Drawing through UIKit applies the EXIF orientation, and the
    /// white fill composites transparency on white, as decode_image does.
    static func inputPixels(_ image: UIImage) throws -> [UInt8] {
        let size = PreprocessConstants.inputSize
        let width = Double(image.size.width * image.scale), height = Double(image.size.height * image.scale)
        guard width >= 1, height >= 1 else { throw ClassifierError.badImage("The image is empty.") }
        guard width * height <= Double(PreprocessConstants.maxPixels) else {
            throw ClassifierError.badImage("The image is too large.")
        }
        // Same arithmetic as Python: shorter side -> resizeSize, round half to even, then center crop.
        let scale = Double(PreprocessConstants.resizeSize) / min(width, height)
        let newWidth = max(size, Int((width * scale).rounded(.toNearestOrEven)))
        let newHeight = max(size, Int((height * scale).rounded(.toNearestOrEven)))
        let left = (newWidth - size) / 2, top = (newHeight - size) / 2

        var rgba = [UInt8](repeating: 0, count: size * size * 4)
        let drawn = rgba.withUnsafeMutableBytes { buffer -> Bool in
            guard let context = CGContext(
                data: buffer.baseAddress, width: size, height: size, bitsPerComponent: 8, bytesPerRow: size * 4,
                space: CGColorSpace(name: CGColorSpace.sRGB)!,
                bitmapInfo: CGImageAlphaInfo.noneSkipLast.rawValue) else { return false }
            context.setFillColor(UIColor.white.cgColor)
            context.fill(CGRect(x: 0, y: 0, width: size, height: size))
            // The reference bilinear resize is antialiased when shrinking; .high is Core Graphics' closest match.
            // The pixels differ by a few levels, not in what the model sees.
            context.interpolationQuality = .high
            context.translateBy(x: 0, y: CGFloat(size))  // UIKit's origin is top-left
            context.scaleBy(x: 1, y: -1)
            UIGraphicsPushContext(context)
            image.draw(in: CGRect(x: -left, y: -top, width: newWidth, height: newHeight))
            UIGraphicsPopContext()
            return true
        }
        guard drawn else { throw ClassifierError.badImage("Could not draw the image.") }

        let plane = size * size
        var chw = [UInt8](repeating: 0, count: 3 * plane)
        for i in 0..<plane {
            chw[i] = rgba[4 * i]
            chw[plane + i] = rgba[4 * i + 1]
            chw[2 * plane + i] = rgba[4 * i + 2]
        }
        return chw
    }
}

/// The part of hotdog.json the app checks.
private struct Metadata: Decodable {
    struct Preprocess: Decodable {
        let input_size: Int
        let resize_size: Int
    }

    struct Program: Decodable {
        let file: String
        let sha256: String
    }

    let labels: [String]
    let preprocess: Preprocess
    let programs: [String: Program]
}
