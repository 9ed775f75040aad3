"""Drift monitoring: the served feature log against the model's training sample.

- monitoring.drift: per-feature Evidently drift, share of drifted features, overall flag.
- monitoring.concept: click-labelled NDCG/MRR, score and retriever drift, the decision
  (no_drift / concept_drift / covariate_drift).
- monitoring.ranking: ranking-aware signals (query segments, clicks by position, click-model
  labels, one-retriever pages).
- monitoring.report: one report per window (HTML + JSON), verdict and action, grouped
  alerts, webhook, retention; monitoring.html: the verdict, evidence and charts the HTML
  pages open with.
- monitoring.simulate: seeded simulated traffic with shifts of known size (calibration).

Kept import-light on purpose: scripts.settings imports monitoring.config, and Evidently
(seconds to import) is only loaded when a report is computed.
"""
