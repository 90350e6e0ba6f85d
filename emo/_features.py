"""``FeatureInfo``: the per-stage description of a backbone's feature maps, with the interface
of ``timm.models.FeatureInfo`` (``channels()``, ``reduction()``, ``module_name()``, ``get``,
``get_dicts``, ``from_other``, ``out_indices``) but no dependency on timm.

It is a list of dicts (``num_chs``, ``reduction``, ``module``, ``index``), so
``model.feature_info[i]["num_chs"]`` and iteration work as on the plain lists of older code,
and timm's own ``FeatureInfo(model.feature_info, out_indices)`` accepts it.
"""
from copy import deepcopy


def _as_tuple(indices, n):
    if indices is None:
        return tuple(range(n))
    if isinstance(indices, int):  # timm: an int n means the last n
        return tuple(range(n - indices, n))
    return tuple(i % n if i < 0 else i for i in indices)


class FeatureInfo(list):
    def __init__(self, info, out_indices=None):
        super().__init__(info)
        prev = 1
        for i, fi in enumerate(self):
            if not (fi.get("num_chs", 0) > 0 and fi.get("reduction", 0) >= prev
                    and "module" in fi):
                raise ValueError(f"feature_info entry {i} is not valid: {fi}")
            prev = fi["reduction"]
            fi.setdefault("index", i)
        self.out_indices = _as_tuple(out_indices, len(self))

    @property
    def info(self):  # timm's FeatureInfo keeps its list here
        return list(self)

    def from_other(self, out_indices):
        return FeatureInfo(deepcopy(list(self)), out_indices)

    def get(self, key, idx=None):
        """``key`` at each out index (idx None), at module index idx (int), or at each of idx."""
        if idx is None:
            return [self[i][key] for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [self[i][key] for i in idx]
        return self[idx][key]

    def get_dicts(self, keys=None, idx=None):
        pick = (lambda d: d) if keys is None else (lambda d: {k: d[k] for k in keys})
        if idx is None:
            return [pick(self[i]) for i in self.out_indices]
        if isinstance(idx, (tuple, list)):
            return [pick(self[i]) for i in idx]
        return pick(self[idx])

    def channels(self, idx=None):
        return self.get("num_chs", idx)

    def reduction(self, idx=None):
        return self.get("reduction", idx)

    def module_name(self, idx=None):
        return self.get("module", idx)
