//! Presets: the column mappings of public preference releases, as the YAML a user could have
//! written. The files live in `pipelines/presets/` (readable, copyable) and are compiled in,
//! so `preset: hh-rlhf` works wherever the binary runs.

/// (name, YAML) of every preset.
pub const PRESETS: &[(&str, &str)] = &[
    (
        "summarize-from-feedback",
        include_str!("../../../pipelines/presets/summarize-from-feedback.yaml"),
    ),
    (
        "hh-rlhf",
        include_str!("../../../pipelines/presets/hh-rlhf.yaml"),
    ),
    (
        "prism",
        include_str!("../../../pipelines/presets/prism.yaml"),
    ),
    (
        "community-alignment",
        include_str!("../../../pipelines/presets/community-alignment.yaml"),
    ),
];

/// The YAML of the preset `name`.
pub fn get(name: &str) -> Option<&'static str> {
    PRESETS.iter().find(|(n, _)| *n == name).map(|(_, y)| *y)
}

/// The presets' names, comma-separated, for messages.
pub fn names() -> String {
    PRESETS
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}
