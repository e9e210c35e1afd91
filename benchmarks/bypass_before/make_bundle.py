"""Scratch: a Gowalla bundle from the real data, embeddings from a truncated SVD (64-d, tanh-scaled)."""
import time
from pathlib import Path
import numpy as np
import scipy.sparse as sp
from hashrec.model.data import load_dataset
from hashrec.model.baselines import svd_embeddings
from hashrec.index.export import build_bundle

t0 = time.time()
ds = load_dataset("/work/shared/data/gowalla")
k = ds.known
known = sp.csr_matrix((np.ones(len(k), np.float32), (k.users, k.items)), shape=(ds.n_users, ds.n_items))
u, i = svd_embeddings(known, 64)
def scale(z):
    return np.tanh(z / (z.std(axis=0, keepdims=True) + 1e-8)).astype(np.float32)
out = build_bundle(Path("bundles-gowalla"), user_z=scale(u), item_z=scale(i), dataset=ds, model_version="gowalla-svd64")
print(out, ds.n_users, ds.n_items, len(k), f"{time.time()-t0:.1f}s")
