//! Text the page shows for numbers: probabilities, sizes, progress.

/// `0.8734` → `"87.3 %"`.
pub fn percent(probability: f32) -> String {
    format!("{:.1} %", probability * 100.0)
}

/// Exact probability for the `data-probability` test hook: the shortest
/// decimal that reads back as the same f32.
pub fn probability_attribute(probability: f32) -> String {
    probability.to_string()
}

/// Bar width in percent, never negative or above 100.
pub fn bar_width(probability: f32) -> f32 {
    (probability * 100.0).clamp(0.0, 100.0)
}

/// `1_500_000` → `"1.5 MB"` (decimal units, as download sizes usually are).
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Progress text for a download, with or without a known total.
pub fn progress(received: u64, total: Option<u64>) -> String {
    match total {
        Some(total) if total > 0 => format!(
            "{} of {} ({:.0} %)",
            megabytes(received),
            megabytes(total),
            received as f64 / total as f64 * 100.0
        ),
        _ => megabytes(received),
    }
}

/// Parameter count as `"1.2 M"`.
pub fn millions(count: usize) -> String {
    format!("{:.1} M", count as f64 / 1e6)
}

/// The figures of a model card's `card.json` the page shows.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct ModelCard {
    /// On the data set's whole test split, measured by `trainer eval`.
    pub test_accuracy: f64,
    pub test_images: usize,
}

impl ModelCard {
    pub fn parse(json: &[u8]) -> Option<Self> {
        serde_json::from_slice(json).ok()
    }

    /// `0.575` → `"57.50%"`, as the card and `trainer eval` print it.
    pub fn accuracy(&self) -> String {
        format!("{:.2}%", self.test_accuracy * 100.0)
    }

    /// `10000` → `"10,000"`.
    pub fn images(&self) -> String {
        let digits = self.test_images.to_string();
        let mut grouped = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        grouped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(percent(0.87345), "87.3 %");
        assert_eq!(bar_width(1.5), 100.0);
        assert_eq!(bar_width(-0.1), 0.0);
        assert_eq!(megabytes(1_500_000), "1.5 MB");
        assert_eq!(
            progress(500_000, Some(2_000_000)),
            "0.5 MB of 2.0 MB (25 %)"
        );
        assert_eq!(progress(500_000, None), "0.5 MB");
        assert_eq!(millions(5_720_000), "5.7 M");
    }

    #[test]
    fn probability_attribute_round_trips() {
        for p in [0.1f32, 0.123_456_79, 1e-7, 1.0] {
            assert_eq!(probability_attribute(p).parse::<f32>().unwrap(), p);
        }
    }

    #[test]
    fn the_shipped_card_reads_as_the_page_shows_it() {
        let card = ModelCard::parse(include_bytes!("../../models/cifar10-demo/card.json"))
            .expect("the shipped card.json");
        assert!(card.test_accuracy > 0.1 && card.test_accuracy <= 1.0);
        assert!(card.accuracy().ends_with('%'));
        let card = ModelCard {
            test_accuracy: 0.575,
            test_images: 10_000,
        };
        assert_eq!(
            (card.accuracy().as_str(), card.images().as_str()),
            ("57.50%", "10,000")
        );
        assert_eq!(
            ModelCard {
                test_images: 100,
                ..card
            }
            .images(),
            "100"
        );
        assert_eq!(ModelCard::parse(b"not json"), None);
    }
}
