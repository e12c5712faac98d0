//! The backend conformance suite: one set of storage behaviours, written once
//! against the `Engine` trait (through the guarded `Store`), run for every
//! engine. Vectors are synthetic so the suite needs no model and runs fast.

mod cases;
mod harness;
mod model;
mod promotion;
mod qdrant_setup;

/// Instantiates every case for one engine; `$make` builds a fresh harness
/// from `(name_hex_chars, collision_drill)`, and `$attr`s go on every test.
macro_rules! conformance {
    ($engine:ident, $make:path $(, #[$attr:meta])*) => {
        mod $engine {
            use crate::cases;

            #[tokio::test]
            $(#[$attr])*
            async fn a_stored_memory_reads_back_and_a_foreign_id_is_none() {
                cases::put_then_get(&$make(32, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn reads_of_a_user_with_no_collection_are_empty_and_create_nothing() {
                cases::reads_of_an_unknown_user(&$make(32, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn search_ranks_by_similarity_and_honours_min_score_and_metadata() {
                cases::search(&$make(32, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn list_pages_in_creation_order_past_a_deleted_cursor() {
                cases::paging(&$make(32, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn delete_and_erase_touch_only_the_callers_memories() {
                cases::delete_and_erase(&$make(32, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn an_update_of_existing_memories_never_brings_back_a_deleted_one() {
                cases::update_existing(&$make(32, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn an_update_of_existing_memories_never_touches_a_neighbours_in_a_shared_collection() {
                cases::update_existing(&$make(1, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn an_expiry_sweep_for_one_owner_never_touches_a_neighbours_memories() {
                cases::expiry_is_swept_per_owner(&$make(1, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn an_expiry_sweep_touches_only_expired_memories_in_a_private_collection() {
                cases::expiry_is_swept_per_owner(&$make(32, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn a_replacement_applies_only_at_the_version_it_names() {
                cases::replace_is_compare_and_set(&$make(1, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn ranges_any_of_and_time_bounds_narrow_search_and_list() {
                cases::filters_narrow_search_and_list(&$make(32, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn keyword_terms_are_counted_and_matched_per_owner() {
                cases::term_conditions(&$make(1, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn keyword_counts_stay_per_owner_without_the_engine_read_filter() {
                cases::term_conditions(&$make(1, true).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn users_sharing_a_collection_stay_apart_with_the_engine_filter() {
                cases::shared_collection(&$make(1, false).await, false).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn users_sharing_a_collection_stay_apart_by_the_guard_alone() {
                cases::shared_collection(&$make(1, true).await, true).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn the_census_counts_only_calls_on_a_collection_another_owner_is_in() {
                cases::shared_census(&$make(1, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn thirty_concurrent_users_each_see_only_their_own() {
                cases::concurrent_users(&$make(32, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn two_replicas_share_a_user_and_race_to_create_and_erase() {
                cases::replicas(&$make(32, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn acknowledged_writes_survive_a_restart() {
                cases::survives_a_restart($make(32, false).await).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn random_operation_sequences_match_the_model() {
                let h = $make(32, false).await;
                crate::model::random_operations_match_the_model(&h, 5, 7, 300).await;
            }

            #[tokio::test]
            $(#[$attr])*
            async fn random_operation_sequences_match_the_model_in_shared_collections() {
                // Twenty users in at most sixteen collections, so some share;
                // the engine filter is off, leaving the guard to separate them.
                let h = $make(1, true).await;
                crate::model::random_operations_match_the_model(&h, 20, 11, 600).await;
            }
        }
    };
}

conformance!(embedded, crate::harness::embedded);
conformance!(
    qdrant,
    crate::harness::qdrant,
    #[ignore = "needs a Qdrant 1.18+ server: QDRANT_URL=http://127.0.0.1:6334 scripts/test"]
);
