"""The Ray executor: runs go to a Ray cluster through its Jobs API (`pip install 'mtld[ray]'`).

- `plugin`, `settings`: the executor as mtld knows it from the settings (`[executor.ray]`).
- `api`: talking to the Jobs API: timeouts, the token, what a refusal or an outage means.
- `jobs`: submitting, watching and stopping a run's Ray job.
- `resources`: what a run asks for, and whether any node could ever give it.
- `workercheck`, `worker`: `mtld doctor`'s check job on a worker.
"""
