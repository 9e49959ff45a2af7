"""Per-block key/value cache for next-scale sampling, preallocated so appends never copy the history."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of the tokens that ran one block at earlier scales (and the current one).

    Storage is allocated once with `capacity` positions (the number of tokens the depth plan lets this block see)
    and grows by doubling only if a dynamic plan exceeds it. When rows have different numbers of valid keys
    (per-token depth with tied ranks), padded positions are tracked in `valid_BT` and masked in attention.
    """

    def __init__(self, capacity: int):
        self.capacity = max(int(capacity), 1)
        self.length = 0
        self.k_BHTd: torch.Tensor | None = None
        self.v_BHTd: torch.Tensor | None = None
        self.valid_BT: torch.Tensor | None = None  # None: every stored position is valid

    def append(self, k_BHld: torch.Tensor, v_BHld: torch.Tensor, valid_Bl: torch.Tensor | None = None) -> None:
        """Store the keys/values of the tokens that just ran the block (all rows append the same count)."""
        n = k_BHld.shape[2]
        if n == 0:
            return
        if self.k_BHTd is None:
            B, H, _, d = k_BHld.shape
            self.k_BHTd = k_BHld.new_empty(B, H, max(self.capacity, n), d)
            self.v_BHTd = v_BHld.new_empty(B, H, max(self.capacity, n), d)
        elif self.length + n > self.k_BHTd.shape[2]:
            self._grow(self.length + n)
        if valid_Bl is not None and self.valid_BT is None:
            self.valid_BT = torch.ones(self.k_BHTd.shape[0], self.k_BHTd.shape[2], dtype=torch.bool,
                                       device=k_BHld.device)
        end = self.length + n
        self.k_BHTd[:, :, self.length:end] = k_BHld
        self.v_BHTd[:, :, self.length:end] = v_BHld
        if self.valid_BT is not None:
            self.valid_BT[:, self.length:end] = True if valid_Bl is None else valid_Bl
        self.length = end

    def _grow(self, needed: int) -> None:
        new_cap = max(needed, 2 * self.k_BHTd.shape[2])
        for name in ("k_BHTd", "v_BHTd"):
            old = getattr(self, name)
            new = old.new_empty(old.shape[0], old.shape[1], new_cap, old.shape[3])
            new[:, :, :self.length] = old[:, :, :self.length]
            setattr(self, name, new)
        if self.valid_BT is not None:
            new_valid = torch.ones(self.valid_BT.shape[0], new_cap, dtype=torch.bool, device=self.valid_BT.device)
            new_valid[:, :self.length] = self.valid_BT[:, :self.length]
            self.valid_BT = new_valid

    def keys_values(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(k, v, valid) over the stored positions; valid is None when all are valid."""
        if self.k_BHTd is None:
            raise RuntimeError("empty KV cache")
        valid = None if self.valid_BT is None else self.valid_BT[:, :self.length]
        return self.k_BHTd[:, :, :self.length], self.v_BHTd[:, :, :self.length], valid

    def keep_rows(self, begin: int, end: int) -> None:
        """Keep only rows [begin, end) (a method stopped running one CFG branch).

        The kept rows are copied so the dropped branch's storage is really released (a view would pin it).
        """
        if self.k_BHTd is not None:
            self.k_BHTd = self.k_BHTd[begin:end].clone()
            self.v_BHTd = self.v_BHTd[begin:end].clone()
        if self.valid_BT is not None:
            self.valid_BT = self.valid_BT[begin:end].clone()

    @property
    def nbytes(self) -> int:
        """Bytes held by the allocated storage (what the GPU really reserves for this cache)."""
        if self.k_BHTd is None:
            return 0
        total = self.k_BHTd.numel() * self.k_BHTd.element_size() * 2
        if self.valid_BT is not None:
            total += self.valid_BT.numel()
        return total

    @property
    def used_nbytes(self) -> int:
        """Bytes of the positions actually filled."""
        if self.k_BHTd is None:
            return 0
        B, H, _, d = self.k_BHTd.shape
        return 2 * B * H * self.length * d * self.k_BHTd.element_size()
