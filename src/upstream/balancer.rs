//! Smooth weighted round robin (as nginx does it): over any window of sum(weights) picks, each
//! target gets exactly its weight, and picks of one target are spread out, not bunched.
//! Called once per request by `Upstream::select`; the lock is held for a few nanoseconds and
//! never across an await.

use std::sync::Mutex;

pub struct SmoothWeighted {
    weights: Vec<i64>,
    total: i64,
    current: Mutex<Vec<i64>>,
}

impl SmoothWeighted {
    pub fn new(weights: &[u32]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
        let total = weights.iter().sum();
        SmoothWeighted {
            current: Mutex::new(vec![0; weights.len()]),
            weights,
            total,
        }
    }

    /// Index of the next target, or None if no target has weight.
    pub fn next(&self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        if self.weights.len() == 1 {
            return Some(0);
        }
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut best = 0;
        let mut best_val = i64::MIN;
        for (i, (c, w)) in cur.iter_mut().zip(&self.weights).enumerate() {
            *c += *w;
            if *w > 0 && *c > best_val {
                best = i;
                best_val = *c;
            }
        }
        cur[best] -= self.total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_sequence() {
        // nginx's classic example: weights 5,1,1 give a a b a c a a (spread, not aaaaabc).
        let b = SmoothWeighted::new(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| b.next().unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn exact_ratios_and_zero_weight() {
        let b = SmoothWeighted::new(&[3, 0, 1]);
        let mut counts = [0; 3];
        for _ in 0..4000 {
            counts[b.next().unwrap()] += 1;
        }
        assert_eq!(counts, [3000, 0, 1000]);
        assert_eq!(SmoothWeighted::new(&[0, 0]).next(), None);
    }
}
