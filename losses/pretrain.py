"""The pre-training objective, Eq. 3: L_pretrain = L_vtc + L_otm + L_mlm + L_epl."""

PRETRAIN_TERMS = ("vtc", "otm", "mlm", "epl")


def pretrain_loss(terms, weights=None):
    """terms: {name: scalar tensor} for some of PRETRAIN_TERMS (a stage may train only some, e.g. EPL
    alone on frozen encoders); weights: {name: float}, 1 when absent (Eq. 3).

    -> {"loss_<name>": term for each given term, "loss": the weighted sum}, the keys the retrieval
    model reports."""
    weights = dict(weights or {})
    unknown = sorted((set(terms) | set(weights)) - set(PRETRAIN_TERMS))
    if unknown:
        raise ValueError(f"unknown pre-training loss terms {unknown}; expected names among {list(PRETRAIN_TERMS)}")
    if not terms:
        raise ValueError(f"pretrain_loss needs at least one of {list(PRETRAIN_TERMS)}")
    out = {f"loss_{name}": value for name, value in terms.items()}
    out["loss"] = sum(weights.get(name, 1.0) * value for name, value in terms.items())
    return out
