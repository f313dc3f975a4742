"""Reference values for `eval::cluster::reference::kmeans_matches_scikit_learn_on_a_fixed_data_set`.

The test builds 600 L2-normalized points in 16-D with SplitMix64; this script builds the
same points and clusters them with scikit-learn (pip install scikit-learn numpy):

    python3 scripts/kmeans-reference.py            # k=6, d=16, 100 per cluster, spread 1.2
"""
import sys

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

M = (1 << 64) - 1


class SplitMix:
    def __init__(self, seed):
        self.s = seed & M

    def unif(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
        return ((z ^ (z >> 31)) >> 11) * 2.0**-53


def blobs(k, d, per, spread):
    r = SplitMix(7)
    centers = [[2 * r.unif() - 1 for _ in range(d)] for _ in range(k)]
    x, y = [], []
    for i in range(per * k):
        c = i % k
        x.append([centers[c][j] + spread * (r.unif() + r.unif() + r.unif() - 1.5) for j in range(d)])
        y.append(c)
    x = np.array(x)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.array(y)


if __name__ == "__main__":
    k, d, per, spread = 6, 16, 100, 1.2
    if len(sys.argv) == 5:
        k, d, per, spread = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    x, y = blobs(k, d, per, spread)
    for seed in range(4):
        km = KMeans(n_clusters=k, n_init=5, random_state=seed).fit(x.astype(np.float64))
        print(f"seed {seed}: NMI {normalized_mutual_info_score(y, km.labels_):.4f} inertia {km.inertia_:.3f}")
