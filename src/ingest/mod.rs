//! ingest: readers and generators that turn source data into store rows.
//!
//! Each stage kind is one module with a serde `Params` struct (the rest of the stage's YAML
//! mapping once the pipeline has taken `name` and `kind`), a pure function
//! `ingest(&Params) -> Result<IngestBatch, IngestError>` and `input_files(&Params)`, the files
//! the pipeline checks before running anything:
//!
//! | kind | module | source |
//! |---|---|---|
//! | `synthetic` | [`synthetic`] | the ideal-point simulation of PAL App. C.2 / D.2 |
//! | `persona` | [`persona`] | Anthropic persona statements, synthetic users (PAL App. D.4) |
//! | `polis` | [`polis`] | one Polis conversation: agree ≻ disagree per voter |
//! | `pickapic` | [`pickapic`] | Pick-a-Pic parquet shards (v1, v2), streamed |
//! | `length_preference_users` | [`tldr`] | summarize-from-feedback comparisons → length-preference users (PAL D.3) |
//! | `preferences` | [`preferences`] | your own data: any of the public formats and layouts, streamed |
//!
//! [`pickapic_fixtures`] writes Pick-a-Pic shards in the published layout for tests and demos
//! (`palpipe fixtures pickapic`); [`tldr_fixtures`] writes summarize-from-feedback
//! comparisons (the `summarize_fixtures` stage).
//!
//! Conventions every stage keeps: item and prompt ids are [`content_id`] of the content (text
//! as UTF-8, vectors as f32 little-endian bytes); pair ids come from [`pair_id`] with the
//! label as the extra part; label −1 means the left item is preferred, +1 the right one, and the
//! preferred item's side is always drawn at random (seeded) so labels are balanced; split tags
//! are "train" / "val" / "test" for seen users and "unseen" for every comparison of an unseen
//! user; user ids carry their dataset as a prefix (`persona/u0003`, `polis/<conv>/<voter>`).
//! Every random choice derives from the stage's `seed` through [`common::rng_for`].
//!
//! What this part does not do: write to the store (`crate::store` turns an [`IngestBatch`]
//! into tables), embed text (`crate::embed`), or build transformed datasets such as
//! Pick-a-Filter (`crate::transform`). The Pick-a-Pic reader streams
//! (it hands chunks to a sink instead of returning one `IngestBatch`), since its shards hold
//! the images themselves.
//!
//! [`content_id`]: crate::store::records::content_id
//! [`pair_id`]: crate::store::records::pair_id
//! [`IngestBatch`]: crate::store::records::IngestBatch

pub mod common;
pub mod persona;
pub mod pickapic;
pub mod pickapic_fixtures;
pub mod polis;
pub mod preferences;
pub mod synthetic;
pub mod tldr;
pub mod tldr_fixtures;

pub use common::IngestError;
