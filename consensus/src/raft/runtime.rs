//! openraft's async runtime for woof: tokio's in every respect but one. The
//! random numbers openraft draws (a group's election timeout) come from a
//! seed when one is set on the thread, so that the simulator can repeat a
//! run exactly; otherwise from the operating system's entropy, as before.

use std::cell::Cell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend};
use openraft_rt_tokio::TokioRuntime as Tokio;
use rand_raft::SeedableRng;
use rand_raft::rngs::StdRng;

thread_local! {
    static SEED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Seeds the random numbers openraft draws on this thread (`None`: from
/// entropy again). Each draw advances the seed, so a run that starts its
/// groups in the same order gets the same timeouts.
pub fn seed_thread_rng(seed: Option<u64>) {
    SEED.with(|s| s.set(seed));
}

/// The next seed after `x` (splitmix64's step and output function).
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// tokio's runtime (openraft's own adapter), with [`seed_thread_rng`]'s
/// random numbers.
#[derive(Debug)]
pub struct WoofRuntime(Tokio);

impl AsyncRuntime for WoofRuntime {
    type JoinError = <Tokio as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <Tokio as AsyncRuntime>::Sleep;
    type Instant = <Tokio as AsyncRuntime>::Instant;
    type TimeoutError = <Tokio as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <Tokio as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = StdRng;
    type Mpsc = <Tokio as AsyncRuntime>::Mpsc;
    type Watch = <Tokio as AsyncRuntime>::Watch;
    type Oneshot = <Tokio as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <Tokio as AsyncRuntime>::Mutex<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        Tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Tokio::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Tokio::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        Tokio::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        Tokio::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SEED.with(|s| match s.get() {
            Some(seed) => {
                s.set(Some(splitmix(seed)));
                StdRng::seed_from_u64(seed)
            }
            None => rand_raft::make_rng(),
        })
    }

    fn new(threads: usize) -> Self {
        WoofRuntime(Tokio::new(threads))
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.0.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, std::io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let task = tokio::task::spawn_blocking(f);
        async move { task.await.map_err(std::io::Error::other) }
    }
}

#[cfg(test)]
mod tests {
    use rand_raft::RngExt;

    use super::*;

    #[test]
    fn a_seed_repeats_the_draws_and_entropy_does_not() {
        let draws = |seed| {
            seed_thread_rng(seed);
            let d: Vec<u64> = (0..4)
                .map(|_| WoofRuntime::thread_rng().random_range(400..700))
                .collect();
            seed_thread_rng(None);
            d
        };
        assert_eq!(draws(Some(7)), draws(Some(7)));
        assert_ne!(draws(Some(7)), draws(Some(8)));
        // Four draws of 300 values each from entropy agree by chance with
        // probability 300^-4.
        assert_ne!(draws(None), draws(None));
    }
}
