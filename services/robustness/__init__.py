"""The robustness monitor: detection, localization, recovery, ETTR."""
