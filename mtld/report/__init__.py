"""Pictures of runs for people: `run` draws one run's figure (`mtld report`)."""
