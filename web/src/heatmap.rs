//! Rollout weights → RGBA pixels for the heat-map overlay (one pixel per
//! patch; the browser scales the canvas up over the image, smoothing it).

/// Colour stops from cold to hot (a short "inferno"-like ramp).
const STOPS: [[f32; 3]; 4] = [
    [20.0, 11.0, 52.0],
    [132.0, 32.0, 107.0],
    [229.0, 92.0, 48.0],
    [252.0, 255.0, 164.0],
];

/// RGBA bytes, 4 per weight: min-max normalised, hot and opaque where the
/// class token attends most, nearly transparent where it attends least.
pub fn rgba(weights: &[f32]) -> Vec<u8> {
    let (min, max) = weights
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &w| {
            (lo.min(w), hi.max(w))
        });
    let range = max - min;
    weights
        .iter()
        .flat_map(|&weight| {
            // A flat map (all weights equal) shows as uniformly cold.
            let t = if range > 0.0 && range.is_finite() {
                ((weight - min) / range).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let [r, g, b] = colour(t);
            [r, g, b, (40.0 + 170.0 * t).round() as u8]
        })
        .collect()
}

fn colour(t: f32) -> [u8; 3] {
    let scaled = t * (STOPS.len() - 1) as f32;
    let index = (scaled.floor() as usize).min(STOPS.len() - 2);
    let frac = scaled - index as f32;
    let (low, high) = (STOPS[index], STOPS[index + 1]);
    [0, 1, 2].map(|c| (low[c] + (high[c] - low[c]) * frac).round() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremes_map_to_the_ends_of_the_ramp() {
        let pixels = rgba(&[0.0, 1.0, 0.5]);
        assert_eq!(pixels.len(), 12);
        assert_eq!(&pixels[0..4], &[20, 11, 52, 40]);
        assert_eq!(&pixels[4..8], &[252, 255, 164, 210]);
        // Midpoint: between the two middle stops.
        assert_eq!(&pixels[8..12], &[181, 62, 78, 125]);
    }

    #[test]
    fn flat_and_empty_maps_do_not_divide_by_zero() {
        assert_eq!(rgba(&[0.5, 0.5]), vec![20, 11, 52, 40, 20, 11, 52, 40]);
        assert!(rgba(&[]).is_empty());
    }
}
