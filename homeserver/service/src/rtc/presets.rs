//! Stream quality presets (spec/voice.md §4): what a client publishes its camera or screen
//! share with, as one profile object every client reads the same way. The server does not see
//! media; what it enforces is the token's grant (STREAM allows camera and screen share at
//! all), and the SFU caps each published layer at the bitrate a client asked for.

use serde_json::{json, Value};

/// One simulcast layer: resolution, frame rate and the most bits per second it may use.
fn layer(width: u32, height: u32, fps: u32, max_bitrate: u32) -> Value {
    json!({ "width": width, "height": height, "fps": fps, "max_bitrate": max_bitrate })
}

/// The presets, best last. `layers` are the lower simulcast layers a publisher adds, best
/// first, so that viewers on slow links get a smaller picture instead of a frozen one.
pub fn presets() -> Value {
    let p360 = layer(640, 360, 30, 500_000);
    let p180 = layer(320, 180, 15, 150_000);
    let p720 = layer(1280, 720, 30, 1_700_000);
    let p1080 = layer(1920, 1080, 30, 3_000_000);
    json!({
        "version": 1,
        "default": "720p30",
        "presets": [
            { "id": "720p30", "width": 1280, "height": 720, "fps": 30,
              "max_bitrate": 2_500_000, "layers": [p360, p180] },
            { "id": "1080p30", "width": 1920, "height": 1080, "fps": 30,
              "max_bitrate": 4_500_000, "layers": [p720, p360] },
            { "id": "1080p60", "width": 1920, "height": 1080, "fps": 60,
              "max_bitrate": 6_000_000, "layers": [p720, p360] },
            { "id": "1440p60", "width": 2560, "height": 1440, "fps": 60,
              "max_bitrate": 9_000_000, "layers": [p1080, p360] },
            { "id": "4K30", "width": 3840, "height": 2160, "fps": 30,
              "max_bitrate": 12_000_000, "layers": [p1080, p360] },
            { "id": "4K60", "width": 3840, "height": 2160, "fps": 60,
              "max_bitrate": 20_000_000, "layers": [p1080, p360] },
        ],
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every preset's layers are smaller and cheaper than the preset, best first.
    #[test]
    fn layers_step_down() {
        let all = presets();
        let list = all["presets"].as_array().unwrap();
        assert_eq!(list.len(), 6);
        for p in list {
            let mut prev = (
                p["height"].as_u64().unwrap(),
                p["max_bitrate"].as_u64().unwrap(),
            );
            for l in p["layers"].as_array().unwrap() {
                let this = (
                    l["height"].as_u64().unwrap(),
                    l["max_bitrate"].as_u64().unwrap(),
                );
                assert!(this.0 < prev.0 && this.1 < prev.1, "{p}");
                prev = this;
            }
        }
        assert!(list.iter().any(|p| p["id"] == all["default"]));
    }
}
