//! Colour filters: tint an image towards a colour by a strength in (0, 1].
//!
//! Each pixel moves the fraction `strength` of the way to the tint colour
//! (`p' = (1 − s)·p + s·tint`), so shapes and contrast stay (scaled by 1 − s) and the whole
//! image takes the tint's cast. The defaults, "cool" (towards blue) and "warm" (towards red)
//! at strength 0.4, leave every fixture scene easy to recognise (see `palpipe contact-sheet`).

use serde::{Deserialize, Serialize};

/// One named colour filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    pub name: String,
    /// The colour pixels move towards, RGB.
    pub tint: [u8; 3],
    /// How far they move, in (0, 1].
    pub strength: f32,
}

impl Filter {
    pub fn cool() -> Filter {
        Filter {
            name: "cool".into(),
            tint: [0, 60, 255],
            strength: 0.4,
        }
    }

    pub fn warm() -> Filter {
        Filter {
            name: "warm".into(),
            tint: [255, 60, 0],
            strength: 0.4,
        }
    }

    /// The strength must be in (0, 1]: 0 would not change the image, above 1 would invert it.
    pub fn check(&self) -> Result<(), String> {
        if !(self.strength > 0.0 && self.strength <= 1.0) {
            return Err(format!(
                "filter '{}': strength is {}, expected a value in (0, 1]",
                self.name, self.strength
            ));
        }
        if self.name.trim().is_empty() {
            return Err("a filter needs a name".into());
        }
        Ok(())
    }

    pub fn apply(&self, img: &image::RgbImage) -> image::RgbImage {
        let s = self.strength;
        let mut out = img.clone();
        for px in out.pixels_mut() {
            for (c, t) in px.0.iter_mut().zip(self.tint) {
                *c = ((1.0 - s) * *c as f32 + s * t as f32)
                    .round()
                    .clamp(0.0, 255.0) as u8;
            }
        }
        out
    }

    /// Decodes `bytes`, applies the filter and encodes the result as JPEG (quality 90; the
    /// encoder is deterministic, so the same input gives the same bytes and content id).
    pub fn apply_to_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>, image::ImageError> {
        let img = image::load_from_memory(bytes)?.to_rgb8();
        let filtered = self.apply(&img);
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode(
            filtered.as_raw(),
            filtered.width(),
            filtered.height(),
            image::ExtendedColorType::Rgb8,
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_raises_red_and_cool_raises_blue() {
        let img = image::RgbImage::from_pixel(4, 4, image::Rgb([100, 100, 100]));
        let w = Filter::warm().apply(&img);
        let c = Filter::cool().apply(&img);
        assert!(w.get_pixel(0, 0)[0] > 100 && w.get_pixel(0, 0)[2] < 100);
        assert!(c.get_pixel(0, 0)[2] > 100 && c.get_pixel(0, 0)[0] < 100);
    }

    #[test]
    fn strength_outside_its_range_is_refused() {
        for s in [0.0, -0.1, 1.5, f32::NAN] {
            let f = Filter {
                strength: s,
                ..Filter::warm()
            };
            assert!(f.check().is_err(), "{s}");
        }
        assert!(Filter::cool().check().is_ok());
    }

    #[test]
    fn filtering_bytes_is_deterministic() {
        let img =
            image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 80]));
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let a = Filter::warm().apply_to_bytes(&png).unwrap();
        assert_eq!(a, Filter::warm().apply_to_bytes(&png).unwrap());
        assert_ne!(a, Filter::cool().apply_to_bytes(&png).unwrap());
    }
}
