import SwiftUI

@main
struct HotdogApp: App {
    var body: some Scene {
        WindowGroup {
            ContentView()
        }
    }
}
