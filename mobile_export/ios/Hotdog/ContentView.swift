import PhotosUI
import SwiftUI
import UIKit

/// Pick or take a photo, see HOTDOG / NOT HOTDOG with the model's confidence.
struct ContentView: View {
    @State private var image: UIImage?
    @State private var verdict: String?
    @State private var detail: String?
    @State private var pickerItem: PhotosPickerItem?
    @State private var showCamera = false
    @State private var classifier: Result<Classifier, Error> = Result { try Classifier() }

    var body: some View {
        VStack(spacing: 16) {
            if let image {
                Image(uiImage: image).resizable().scaledToFit().frame(maxHeight: 360)
            } else {
                Image(systemName: "photo").font(.system(size: 80)).foregroundStyle(.secondary)
            }
            if let verdict {
                Text(verdict).font(.largeTitle.bold())
                    .foregroundStyle(verdict == "HOTDOG" ? Color.green : Color.red)
            }
            if let detail {
                Text(detail).font(.callout).foregroundStyle(.secondary)
            }
            HStack {
                PhotosPicker("Photo library", selection: $pickerItem, matching: .images)
                    .buttonStyle(.borderedProminent)
                if UIImagePickerController.isSourceTypeAvailable(.camera) {
                    Button("Camera") { showCamera = true }.buttonStyle(.bordered)
                }
            }
        }
        .padding()
        .onChange(of: pickerItem) { _, item in
            Task {
                if let data = try? await item?.loadTransferable(type: Data.self), let picked = UIImage(data: data) {
                    classify(picked)
                }
            }
        }
        .sheet(isPresented: $showCamera) {
            CameraPicker { classify($0) }.ignoresSafeArea()
        }
    }

    private func classify(_ picked: UIImage) {
        image = picked
        do {
            let prediction = try classifier.get().classify(picked)
            verdict = prediction.isHotdog ? "HOTDOG" : "NOT HOTDOG"
            detail = String(format: "confidence %.1f%%", prediction.confidence * 100)
        } catch {
            verdict = nil
            detail = error.localizedDescription
        }
    }
}

/// UIImagePickerController's camera, wrapped for SwiftUI (PhotosPicker has no camera source).
struct CameraPicker: UIViewControllerRepresentable {
    let onImage: (UIImage) -> Void
    @Environment(\.dismiss) private var dismiss

    func makeUIViewController(context: Context) -> UIImagePickerController {
        let picker = UIImagePickerController()
        picker.sourceType = .camera
        picker.delegate = context.coordinator
        return picker
    }

    func updateUIViewController(_ controller: UIImagePickerController, context: Context) {}

    func makeCoordinator() -> Coordinator { Coordinator(self) }

    final class Coordinator: NSObject, UIImagePickerControllerDelegate, UINavigationControllerDelegate {
        let parent: CameraPicker
        init(_ parent: CameraPicker) { self.parent = parent }

        func imagePickerController(_ picker: UIImagePickerController,
                                   didFinishPickingMediaWithInfo info: [UIImagePickerController.InfoKey: Any]) {
            if let image = info[.originalImage] as? UIImage { parent.onImage(image) }
            parent.dismiss()
        }

        func imagePickerControllerDidCancel(_ picker: UIImagePickerController) { parent.dismiss() }
    }
}
