"""The Ray executor: runs go to a Ray cluster through its Jobs API (`pip install 'mtld[ray]'`).

- `jobs`: submitting, watching and stopping a run's Ray job.
- `workercheck`: `mtld doctor`'s check job on a worker.
"""
