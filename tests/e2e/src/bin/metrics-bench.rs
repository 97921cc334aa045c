//! Cost of `/metrics` on the request path (not a test): what `Metrics::track` does per
//! request (two `Instant::now`, a counter increment, a histogram observation under the
//! histogram's mutex), on 1, 2 and 4 threads sharing one route's series, the worst case.
//! `cargo build --release -p strongroom-e2e --bin metrics-bench && target/release/metrics-bench`.

use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

fn main() {
    let latency =
        Family::<[(&'static str, &'static str); 1], Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 14))
        });
    let h = latency.get_or_create(&[("route", "messages")]).clone();
    let requests = Family::<[(&'static str, &'static str); 3], Counter>::default();
    let c = requests
        .get_or_create(&[("route", "messages"), ("method", "POST"), ("status", "2xx")])
        .clone();
    let n: u32 = 2_000_000;
    for threads in [1u32, 2, 4] {
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..threads {
                let (h, c) = (h.clone(), c.clone());
                s.spawn(move || {
                    for _ in 0..n {
                        let start = Instant::now();
                        c.inc();
                        h.observe(std::hint::black_box(start.elapsed().as_secs_f64()));
                    }
                });
            }
        });
        let wall = t0.elapsed();
        println!(
            "{threads} thread(s): {:.0} ns per request per thread (wall), {:.2} M requests/s in all",
            wall.as_secs_f64() * 1e9 / f64::from(n),
            f64::from(n) * f64::from(threads) / wall.as_secs_f64() / 1e6
        );
    }
}
