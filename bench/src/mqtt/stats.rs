//! Pure arithmetic of the MQTT scenarios: the search for the highest loss-free rate, medians, number
//! formatting.

/// Finds the highest rate that passes: geometric steps up from `start` until a probe fails (or down
/// when the first one fails), then bisection between the best pass and the lowest failure until they are
/// within `precision` of each other, or `max_probes` have run.
#[derive(Debug, Clone)]
pub struct RateSearch {
    start: f64,
    factor: f64,
    precision: f64,
    max_rate: f64,
    max_probes: usize,
    probes: usize,
    /// Highest rate that passed.
    pub best: Option<f64>,
    /// Lowest rate that failed.
    pub failed: Option<f64>,
}

impl RateSearch {
    pub fn new(start: f64, factor: f64, max_rate: f64, max_probes: usize) -> Self {
        Self {
            start: start.max(1.0),
            factor: factor.max(1.01),
            precision: 1.05,
            max_rate,
            max_probes,
            probes: 0,
            best: None,
            failed: None,
        }
    }

    /// The next rate to probe, `None` when done.
    pub fn next(&self) -> Option<f64> {
        if self.probes >= self.max_probes {
            return None;
        }
        match (self.best, self.failed) {
            (None, None) => Some(self.start),
            (Some(b), None) => {
                let r = (b * self.factor).min(self.max_rate);
                (r > b).then_some(r)
            }
            (None, Some(f)) => {
                let r = f / self.factor;
                (r >= 1.0).then_some(r)
            }
            (Some(b), Some(f)) => (f / b > self.precision).then(|| (b * f).sqrt()),
        }
    }

    /// Records a probe's outcome.
    pub fn record(&mut self, rate: f64, passed: bool) {
        self.probes += 1;
        if passed {
            if self.best.is_none_or(|b| rate > b) {
                self.best = Some(rate);
            }
        } else if self.failed.is_none_or(|f| rate < f) {
            self.failed = Some(rate);
        }
    }
}

/// Index of the median of `values` (the lower middle one for an even count); `None` when empty.
pub fn median_index(values: &[f64]) -> Option<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    idx.get(values.len().saturating_sub(1) / 2).copied()
}

pub use crate::report::thousands;

/// `ferry / peer` as `1.23×`, or `–` without a peer figure.
pub fn ratio(ferry: f64, peer: f64) -> String {
    if peer > 0.0 && ferry.is_finite() {
        format!("{:.2}×", ferry / peer)
    } else {
        "–".to_owned()
    }
}

/// Nearest-rank quantile of sorted µs values, in ms.
pub fn quantile_ms(sorted_us: &[u32], q: f64) -> f64 {
    f64::from(crate::load::percentile(sorted_us, q)) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(search: &mut RateSearch, capacity: f64) -> Vec<f64> {
        let mut probed = Vec::new();
        while let Some(r) = search.next() {
            probed.push(r);
            search.record(r, r <= capacity);
        }
        probed
    }

    #[test]
    fn the_search_climbs_then_bisects() {
        let mut s = RateSearch::new(1000.0, 2.0, 1e9, 30);
        let probed = run(&mut s, 5000.0);
        assert_eq!(&probed[..4], &[1000.0, 2000.0, 4000.0, 8000.0]);
        let best = s.best.expect("found");
        assert!(best <= 5000.0 && best > 5000.0 / 1.05, "{best}");
        assert!(s.failed.expect("a failure") / best <= 1.05);
    }

    #[test]
    fn the_search_descends_when_the_start_fails_and_respects_limits() {
        let mut s = RateSearch::new(1000.0, 2.0, 1e9, 30);
        run(&mut s, 300.0);
        let best = s.best.expect("found");
        assert!(best <= 300.0 && best > 300.0 / 1.05, "{best}");

        let mut capped = RateSearch::new(1000.0, 2.0, 3000.0, 30);
        let probed = run(&mut capped, 1e9);
        assert_eq!(probed, vec![1000.0, 2000.0, 3000.0]);

        let mut short = RateSearch::new(1000.0, 2.0, 1e9, 2);
        assert_eq!(run(&mut short, 1e9).len(), 2);

        let mut nothing = RateSearch::new(1.0, 2.0, 1e9, 30);
        run(&mut nothing, 0.0);
        assert_eq!(nothing.best, None);
    }

    #[test]
    fn medians_and_formatting() {
        assert_eq!(median_index(&[3.0, 1.0, 2.0]), Some(2));
        assert_eq!(median_index(&[4.0, 1.0, 3.0, 2.0]), Some(3));
        assert_eq!(median_index(&[]), None);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(12.0), "12");
        assert_eq!(ratio(150.0, 100.0), "1.50×");
        assert_eq!(ratio(1.0, 0.0), "–");
        assert_eq!(quantile_ms(&[1000, 2000, 3000, 4000], 0.5), 2.0);
    }
}
