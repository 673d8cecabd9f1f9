"""Event counts that add up across DataLoader worker processes.

Datasets run inside worker processes, so a plain attribute incremented there is never seen by
the training loop. The values live in shared memory created with the dataset, which the
workers inherit (fork or spawn alike), so the main process reads the totals.
"""
import multiprocessing


class SharedCounters:
    def __init__(self, *names):
        self._values = {name: multiprocessing.Value("q", 0) for name in names}

    def add(self, name, n=1):
        value = self._values[name]
        with value.get_lock():
            value.value += n

    def __getitem__(self, name):
        return self._values[name].value

    def as_dict(self):
        return {name: value.value for name, value in self._values.items()}
