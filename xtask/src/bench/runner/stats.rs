//! Summaries of repeated measurements: every figure in the report is a median with its spread.

/// The median of several runs, with the smallest and largest run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: usize,
}

impl Summary {
    pub(crate) fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            median: percentile_sorted(&sorted, 50.0),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            runs: sorted.len(),
        }
    }

    /// "123 (118–130)" with `decimals` digits.
    pub(crate) fn show(&self, decimals: usize) -> String {
        if self.runs == 0 {
            return "–".to_owned();
        }
        format!(
            "{} ({}–{})",
            number(self.median, decimals),
            number(self.min, decimals),
            number(self.max, decimals)
        )
    }
}

/// The `p`th percentile (0–100) of sorted values, by linear interpolation.
pub(crate) fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (low, high) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[low] + (sorted[high] - sorted[low]) * (rank - low as f64)
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    percentile_sorted(&sorted, 50.0)
}

/// A number with thousands separators: 12,345.6.
pub(crate) fn number(value: f64, decimals: usize) -> String {
    if !value.is_finite() {
        return "–".to_owned();
    }
    let text = format!("{:.*}", decimals, value.abs());
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if value < 0.0 { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{frac}")
    }
}

/// "1 Service", "1,000 Services".
pub(crate) fn services(count: usize) -> String {
    if count == 1 {
        "1 Service".to_owned()
    } else {
        format!("{} Services", number(count as f64, 0))
    }
}

/// A ratio of medians, "0.97×".
pub(crate) fn ratio(numerator: &Summary, denominator: &Summary) -> f64 {
    if denominator.median == 0.0 {
        f64::NAN
    } else {
        numerator.median / denominator.median
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_formatting() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max, s.runs), (2.5, 1.0, 10.0, 4));
        assert_eq!(number(1234567.891, 1), "1,234,567.9");
        assert_eq!(number(999.0, 0), "999");
        assert_eq!(s.show(1), "2.5 (1.0–10.0)");
    }
}
