//! The test infrastructure of `tower-idempotency`, in one place.
//!
//! - [`server`]: [`TestServer`], a real axum server over TCP whose handler counts its
//!   executions and obeys request headers (see [`headers`]); [`serve`] for any tower service.
//! - [`gate`]: signals instead of sleeps. A request carrying `x-gate: NAME` makes the handler
//!   announce that it started and wait until the test opens that [`Gate`]; [`Count`]s a test
//!   can wait on.
//! - [`probe`]: a pass-through store wrapper counting what the layer asked the store, so a
//!   test can wait for "the duplicate saw the claim in flight" or check "the key was released
//!   before the answer".
//! - [`faults`]: [`Faulty`], a wrapper injecting store faults (failed or slow calls) into
//!   a real store, driven by a shared [`Faults`] plan.
//! - [`relay`]: [`Relay`], a TCP relay that silences or resets connections to a real server.
//! - [`problem`]: [`assert_problem`] for `application/problem+json` answers.
//! - [`suite`]: the HTTP-level layer suite, every scenario generic over the store, and
//!   [`layer_suite!`] turning it into one test per scenario for one store:
//!
//! ```ignore
//! tower_idempotency_testkit::layer_suite!(async { MemoryStore::default() });
//! ```
//! - [`transactional`]: the same for transactional mode: [`TxServer`](transactional::TxServer),
//!   whose handler writes through the lent transaction, and [`transactional_suite!`], run
//!   against every database that implements [`EffectsDb`](transactional::EffectsDb).

pub mod faults;
pub mod gate;
pub mod probe;
pub mod problem;
pub mod relay;
pub mod server;
pub mod suite;
pub mod transactional;

pub use self::{
    faults::{Faults, Faulty, Operation},
    gate::{Count, Gate},
    probe::{Probe, Probed, StoreCalls},
    problem::assert_problem,
    relay::Relay,
    server::{Served, TestServer, headers, layer, serve, unique},
};

/// How long a test waits for a signal (a handler reaching a gate, a count reaching a value)
/// before failing with a message instead of hanging. Generous: the tests run on loaded
/// machines, and a signal that comes at all comes within milliseconds.
pub const SIGNAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Generates one `#[tokio::test]` per scenario of the [`suite`]. `$make` is an expression
/// evaluating to a future of a fresh store; it is evaluated once per test.
///
/// Scenarios use unique users and keys, so stores shared between tests and test processes
/// (one Redis, one database table) are fine.
#[macro_export]
macro_rules! layer_suite {
    ($make:expr) => {
        $crate::__layer_suite!($make;
            a_retry_replays_the_original_response_byte_for_byte,
            different_keys_and_unkeyed_requests_each_execute,
            users_never_see_each_others_responses,
            concurrent_duplicates_execute_the_handler_exactly_once,
            wait_mode_replays_to_concurrent_duplicates,
            a_key_reused_for_another_request_is_rejected_in_every_state,
            reformatted_json_is_the_same_request,
            errors_release_the_key_so_a_corrected_request_can_run,
            no_store_responses_are_not_kept,
            a_disconnected_client_still_gets_the_result_on_retry,
            malformed_and_missing_keys_and_scopes,
            oversized_requests_are_refused_unexecuted,
            oversized_responses_reach_the_caller_and_are_never_re_executed,
            a_panicking_handler_gets_a_problem_and_frees_the_key,
            the_lease_is_renewed_while_a_slow_handler_runs,
            custom_problem_responses_replace_the_default,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __layer_suite {
    ($make:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let store = $make.await;
                $crate::suite::run(
                    stringify!($scenario),
                    $crate::suite::$scenario(store),
                )
                .await;
            }
        )*
    };
}

/// Generates one `#[tokio::test]` per scenario of the [`transactional::suite`]. `$make` is an
/// expression evaluating to a future of an `Arc` of an [`EffectsDb`](transactional::EffectsDb).
#[macro_export]
macro_rules! transactional_suite {
    ($make:expr) => {
        $crate::__transactional_suite!($make;
            a_kept_response_commits_with_its_effects_and_replays,
            responses_not_kept_roll_back_and_free_the_key,
            a_panicking_handler_rolls_back,
            duplicates_in_flight_get_409_at_once,
            wait_mode_replays_to_waiting_duplicates,
            a_disconnected_client_finds_the_commit_on_retry,
            a_handler_past_its_time_limit_rolls_back,
            unkeyed_requests_get_a_transaction_of_their_own,
            a_key_is_free_after_its_ttl,
            concurrent_keys_each_commit_once,
            retries_racing_the_commit_execute_each_key_once,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __transactional_suite {
    ($make:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let db = $make.await;
                $crate::suite::run(
                    stringify!($scenario),
                    $crate::transactional::suite::$scenario(db),
                )
                .await;
            }
        )*
    };
}
