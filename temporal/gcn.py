"""GCN over regions: the space-time region graph of Wang & Gupta, "Videos as Space-Time Region Graphs" (ECCV 2018),
with nodes and edges that carry geometry, so that its defaults learn relations instead of memorising looks.

Every valid region (RoI) of every sampled step is a node. Three kinds of relation connect the nodes:

* **similarity**: ``G_sim[i, j] = softmax_j((W_theta x_i)^T (W_phi x_j))`` over the valid nodes, which links
  regions that look alike or are semantically related however far apart in time they are;
* **spatio-temporal**: a *forward* graph from each box at step t to the boxes at t+1, weighted by their IoU
  and row-normalised, and a *backward* graph from t to t-1 built the same way. Forward and backward messages
  have their own weights, so unlike self-attention (a non-local block) the graph knows which way time runs;
* **relation** (not in the paper): each region to the other regions of its own step, uniformly weighted.

A layer computes ``Z = sum_g G_g X W_g + sum_g U_g E_g`` over the graphs g, ``E_g = sum_j G_g[i, j] phi(e_ij)``
being the embedded relative geometry ``e_ij`` of the boxes along that graph's edges (not in the paper either),
then ``X <- ReLU(LayerNorm(X + Z))``. The readout averages the valid nodes and concatenates the mean of the global
frame features (the paper's pooled I3D feature), then dropout and a linear classifier. Padding (steps or region
slots) never changes the logits: padded nodes are excluded from every graph and from the readout. Why each change
was made, with the measurements, is in :class:`GCNHead` and the README.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vidfeat.features.errors import UserError
from vidfeat.temporal.layers import Dropout

GEOMETRY_DIM = 8  # x1 y1 x2 y2, centre x y, width, height (all normalised to [0, 1])
EDGE_DIM = 64  # width of the embedded edge geometry
TIME_FREQUENCIES = 4  # sinusoids coding a step's place in its video


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of ``a [..., R, 4]`` and ``b [..., S, 4]`` (x1 y1 x2 y2) -> ``[..., R, S]``; 0 for empty boxes."""
    a, b = a.float(), b.float()
    lo = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    hi = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    inter = (hi - lo).clamp_min(0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp_min(0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp_min(0).prod(-1)
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def _row_normalise(weights: Tensor) -> Tensor:
    """Rows sum to 1; a row without any edge (no overlapping box in the neighbouring step) stays all zero."""
    total = weights.sum(-1, keepdim=True)
    return weights / torch.where(total > 0, total, torch.ones_like(total))


def temporal_graphs(boxes: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """The spatio-temporal graphs as per-step blocks, ``[B, T, R, R]`` each.

    ``forward[b, t, i, j]`` is the row-normalised IoU between box i at step t and box j at step t+1 (zero at
    the last step); ``backward[b, t, i, j]`` links box i at t to box j at t-1 (zero at the first step). Only
    neighbouring steps are connected, so storing the blocks instead of a dense ``[N, N]`` matrix costs T*R^2.
    """
    pair = valid[:, :-1, :, None] & valid[:, 1:, None, :]
    iou = box_iou(boxes[:, :-1], boxes[:, 1:]) * pair  # [B, T-1, R(t), R(t+1)]
    zeros = iou.new_zeros(boxes.shape[0], 1, boxes.shape[2], boxes.shape[2])
    forward = torch.cat([_row_normalise(iou), zeros], dim=1)
    backward = torch.cat([zeros, _row_normalise(iou.transpose(-1, -2))], dim=1)
    return forward, backward


def similarity_graph(theta: Tensor, phi: Tensor, valid: Tensor) -> Tensor:
    """``[B, N, N]`` softmax over valid j of ``theta_i . phi_j / sqrt(d)``; rows and columns of padded nodes are 0.

    The 1/sqrt(d) scaling (absorbed into W_theta in the paper) keeps the softmax from saturating at init.
    """
    scores = theta @ phi.transpose(1, 2) / math.sqrt(theta.shape[-1])
    scores = scores.masked_fill(~valid[:, None, :], torch.finfo(scores.dtype).min)
    graph = torch.softmax(scores.float(), dim=-1)
    return graph * (valid[:, :, None] & valid[:, None, :])


def box_geometry(boxes: Tensor, valid: Tensor, centred: bool = True) -> Tensor:
    """``[B, T, R, 4]`` normalised boxes -> ``[B, T, R, 8]`` geometry (corners, centre, size) for the box embedding.

    ``centred``: positions are taken relative to the mean centre of the clip's valid boxes. A relation does not
    depend on where in the frame it happens; in image coordinates a head memorises positions instead (on the
    relational benchmark, 96 training videos: 84% vs 57% test accuracy from boxes alone).
    """
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    size = boxes[..., 2:] - boxes[..., :2]
    if centred:
        weights = valid.unsqueeze(-1).to(boxes.dtype)
        origin = (centre * weights).sum((1, 2), keepdim=True) / weights.sum((1, 2), keepdim=True).clamp_min(1)
        boxes, centre = boxes - origin.repeat(1, 1, 1, 2), centre - origin
    return torch.cat([boxes, centre, size], dim=-1)


def relative_geometry(a: Tensor, b: Tensor) -> Tensor:
    """Edge features from box i of ``a [..., R, 4]`` to box j of ``b [..., S, 4]`` -> ``[..., R, S, 5]``: the
    displacement of the centre, the change of width and height, and the centre distance, in units of a
    quarter frame (so a typical relation is of order 1)."""
    centre_a, centre_b = (a[..., :2] + a[..., 2:]) / 2, (b[..., :2] + b[..., 2:]) / 2
    size_a, size_b = a[..., 2:] - a[..., :2], b[..., 2:] - b[..., :2]
    shift = centre_b[..., None, :, :] - centre_a[..., :, None, :]
    resize = size_b[..., None, :, :] - size_a[..., :, None, :]
    return torch.cat([shift, resize, shift.norm(dim=-1, keepdim=True)], dim=-1) * 4


def relation_graph(valid: Tensor) -> Tensor:
    """``[B, T, R, R]`` links from each valid region to every *other* valid region of the same step, row-normalised:
    the edges along which regions compare where they are relative to each other at one moment."""
    pair = valid[..., :, None] & valid[..., None, :]
    pair = pair & ~torch.eye(valid.shape[-1], dtype=torch.bool, device=valid.device)
    return _row_normalise(pair.float())


def step_positions(mask: Tensor, frequencies: int) -> Tensor:
    """``[B, T, 2F]`` sinusoidal code of each step's place in its video, 0 at the first valid step and 1 at the
    last, so videos of any length (and any number of padded steps) share one time axis."""
    count = mask.sum(1, keepdim=True).clamp_min(2) - 1
    position = torch.arange(mask.shape[1], device=mask.device)[None].float() / count
    angles = position[..., None] * math.pi * torch.arange(1, frequencies + 1, device=mask.device).float()
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


@dataclass
class RegionGraphs:
    """The graphs of a batch, built once and read by every layer: per-step ``[B, T, R, R]`` blocks, and for each
    the edge-geometry message ``sum_j G_ij phi(e_ij)`` ``[B, T, R, E]`` where edge geometry is on (else None)."""

    forward: Tensor | None = None
    backward: Tensor | None = None
    relation: Tensor | None = None
    forward_edges: Tensor | None = None
    backward_edges: Tensor | None = None
    relation_edges: Tensor | None = None


class GraphLayer(nn.Module):
    """One graph convolution ``X <- ReLU(LayerNorm(X + sum_g G_g X W_g + sum_g U_g E_g))`` over the enabled graphs,
    ``E_g`` being the graph's aggregated edge geometry when edge geometry is on."""

    def __init__(
        self, dim: int, similarity: bool, spatiotemporal: bool, relation: bool, edge_dim: int, dropout: float
    ) -> None:
        super().__init__()
        self.similarity, self.spatiotemporal, self.relation = similarity, spatiotemporal, relation
        if similarity:
            self.theta = nn.Linear(dim, dim, bias=False)
            self.phi = nn.Linear(dim, dim, bias=False)
            self.w_sim = nn.Linear(dim, dim, bias=False)
        if spatiotemporal:
            self.w_forward = nn.Linear(dim, dim, bias=False)
            self.w_backward = nn.Linear(dim, dim, bias=False)
        if relation:
            self.w_relation = nn.Linear(dim, dim, bias=False)
        # U_g of each graph whose edges carry geometry; a name also picks RegionGraphs' "<name>_edges" field.
        enabled = {"forward": spatiotemporal, "backward": spatiotemporal, "relation": relation}
        self.edge_graphs = [name for name, on in enabled.items() if on and edge_dim]
        for name in self.edge_graphs:
            setattr(self, f"u_{name}", nn.Linear(edge_dim, dim, bias=False))
        self.dropout = Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def _projections(self, h: Tensor) -> dict[str, Tensor]:
        """Every node's products with all the layer's weight matrices, as one matrix product (a few small ones cost
        several times more on a CPU); row for row the same numbers as applying each ``nn.Linear`` on its own."""
        names = [name for name, on in (("theta", self.similarity), ("phi", self.similarity), ("w_sim", self.similarity),
                                       ("w_forward", self.spatiotemporal), ("w_backward", self.spatiotemporal),
                                       ("w_relation", self.relation)) if on]
        weight = torch.cat([getattr(self, name).weight for name in names])
        return dict(zip(names, nn.functional.linear(h, weight).split(h.shape[-1], dim=-1)))

    def forward(self, h: Tensor, valid: Tensor, graphs: RegionGraphs) -> Tensor:
        """``h [B, T, R, d]`` node features, ``valid [B, T, R]``; returns updated features, zero at padded nodes."""
        b, t, r, d = h.shape
        z = torch.zeros_like(h)
        projected = self._projections(h)
        if self.similarity:
            flat = {name: projected[name].reshape(b, t * r, d) for name in ("theta", "phi", "w_sim")}
            graph = similarity_graph(flat["theta"], flat["phi"], valid.reshape(b, t * r)).to(h.dtype)
            z = z + (graph @ flat["w_sim"]).reshape(b, t, r, d)
        if self.spatiotemporal:
            # Node (t, i) gathers W_f x from the boxes at t+1 and W_b x from those at t-1 (G X W = G (X W)).
            ahead = torch.cat([projected["w_forward"][:, 1:], h.new_zeros(b, 1, r, d)], dim=1)
            behind = torch.cat([h.new_zeros(b, 1, r, d), projected["w_backward"][:, :-1]], dim=1)
            z = z + graphs.forward.to(h.dtype) @ ahead + graphs.backward.to(h.dtype) @ behind
        if self.relation:
            z = z + graphs.relation.to(h.dtype) @ projected["w_relation"]
        for name in self.edge_graphs:
            z = z + getattr(self, f"u_{name}")(getattr(graphs, f"{name}_edges").to(h.dtype))
        return torch.relu(self.norm(h + self.dropout(z))) * valid.unsqueeze(-1).to(h.dtype)


class GCNHead(nn.Module):
    """Space-time region graph head: RoI nodes, similarity + forward/backward IoU + same-step relation graphs.

    ``forward(x, mask, rois, boxes, roi_mask)``: ``x [B, T, D]`` global step features and ``mask [B, T]`` as
    for every head, plus the regions of each step: ``rois [B, T, R, Dr]`` features, ``boxes [B, T, R, 4]``
    normalised x1 y1 x2 y2 and ``roi_mask [B, T, R]`` (True = a real region). ``roi_dim`` (Dr) defaults to
    ``input_dim``; the runner sets it from the store. Boxes need no track ids: the graphs link regions by overlap,
    by step and by look, so grid and detector boxes work as well as tracked ones.

    What a node sees, and why (measured on the two relational benchmarks, see the README):

    * **appearance through a bottleneck**: the RoI feature is squeezed to ``appearance_dim`` numbers,
      normalised, dropped out (``appearance_dropout``), and for a ``drop_appearance`` share of the training videos
      left out entirely. A wide RoI feature otherwise lets the head memorise each training video by its look;
    * **its box** (``box_embedding``), relative to the clip's mean box centre (``centred_boxes``);
    * **its place in time** (``time_embedding``), so the readout can tell early from late;
    * **relative geometry on the edges** (``edge_geometry``): each message carries the displacement to the box it
      comes from, so a node knows how it moved (forward/backward graphs) and where the others are (relation graph).

    Ablations: ``similarity``, ``spatiotemporal`` and ``relation`` drop their graph, ``global_branch=False`` reads
    out the region nodes only, ``appearance=False`` builds the nodes from geometry only (RoI features unused),
    ``box_embedding=False`` leaves the node's own box out (it still shapes the IoU graphs), as in the paper.
    """

    uses_regions = True  # the runner feeds rois/boxes/roi_mask from the store (see temporal.runs)
    # A graph learns relations later than a frame head learns looks: at the shared lr 1e-3, 60 epochs and
    # patience 15, some seeds stopped before they took off (see the README's GCN section).
    train_defaults = {"lr": 3e-3, "epochs": 120, "patience": 30}

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        roi_dim: int | None = None,
        hidden: int = 128,
        layers: int = 2,
        similarity: bool = True,
        spatiotemporal: bool = True,
        relation: bool = True,
        global_branch: bool = True,
        appearance: bool = True,
        appearance_dim: int = 32,
        appearance_dropout: float = 0.5,
        drop_appearance: float = 0.6,
        box_embedding: bool = True,
        centred_boxes: bool = True,
        edge_geometry: bool = True,
        time_embedding: bool = True,
        graph_dropout: float = 0.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if not (appearance or box_embedding):
            raise UserError("gcn nodes need features: keep appearance=true (RoI features) or box_embedding=true")
        if not (similarity or spatiotemporal or relation):
            raise UserError(
                "gcn needs at least one graph: keep similarity=true, spatiotemporal=true or relation=true "
                "(with none, it would be an order-blind mean over regions)"
            )
        if layers < 1 or hidden < 1 or appearance_dim < 1:
            raise UserError(
                f"gcn needs layers, hidden and appearance_dim >= 1, got {layers}, {hidden} and {appearance_dim}"
            )
        if not 0 <= drop_appearance < 1:
            raise UserError(f"drop_appearance is a probability in [0, 1), got {drop_appearance}")
        self.input_dim, self.roi_dim = input_dim, roi_dim or input_dim
        self.hidden, self.global_branch, self.appearance = hidden, global_branch, appearance
        self.box_embedding, self.centred_boxes = box_embedding, centred_boxes
        self.spatiotemporal, self.relation, self.drop_appearance = spatiotemporal, relation, drop_appearance
        if appearance:
            self.reduce = nn.Sequential(
                nn.Linear(self.roi_dim, appearance_dim), nn.LayerNorm(appearance_dim), Dropout(appearance_dropout),
                nn.Linear(appearance_dim, hidden),
            )
        if box_embedding:
            self.geometry = nn.Sequential(nn.Linear(GEOMETRY_DIM, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
            self.geometry_norm = nn.LayerNorm(hidden)
        if time_embedding:
            self.time = nn.Linear(2 * TIME_FREQUENCIES, hidden)
        edge_dim = EDGE_DIM if edge_geometry and (spatiotemporal or relation) else 0
        if edge_dim:
            self.edges = nn.Sequential(nn.Linear(5, edge_dim), nn.ReLU(), nn.Linear(edge_dim, edge_dim))
        self.layers = nn.ModuleList(
            GraphLayer(hidden, similarity, spatiotemporal, relation, edge_dim, graph_dropout) for _ in range(layers)
        )
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(hidden + (input_dim if global_branch else 0), num_classes)

    def _check(self, x: Tensor, mask: Tensor, rois: Tensor | None, boxes: Tensor | None, roi_mask: Tensor | None):
        if rois is None or boxes is None or roi_mask is None:
            raise ValueError(
                "the gcn head needs region features (rois, boxes, roi_mask) besides the frame features; "
                "train it on a store extracted with `vidfeat extract ... --rois SOURCE`"
            )
        if x.dim() != 3 or x.shape[-1] != self.input_dim:
            raise ValueError(f"gcn expects global features [B, T, {self.input_dim}], got shape {tuple(x.shape)}")
        b, t = x.shape[:2]
        if mask.shape != (b, t) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool [B, T] = {(b, t)}, got {mask.dtype} {tuple(mask.shape)}")
        if rois.dim() != 4 or rois.shape[:2] != (b, t) or rois.shape[-1] != self.roi_dim:
            raise ValueError(
                f"rois must be [B, T, R, {self.roi_dim}] with B, T = {(b, t)}, got shape {tuple(rois.shape)}"
            )
        r = rois.shape[2]
        if boxes.shape != (b, t, r, 4):
            raise ValueError(f"boxes must be [B, T, R, 4] = {(b, t, r, 4)}, got shape {tuple(boxes.shape)}")
        if roi_mask.shape != (b, t, r) or roi_mask.dtype != torch.bool:
            raise ValueError(
                f"roi_mask must be bool [B, T, R] = {(b, t, r)}, got {roi_mask.dtype} {tuple(roi_mask.shape)}"
            )

    def forward(
        self,
        x: Tensor,
        mask: Tensor,
        rois: Tensor | None = None,
        boxes: Tensor | None = None,
        roi_mask: Tensor | None = None,
    ) -> Tensor:
        self._check(x, mask, rois, boxes, roi_mask)
        valid = roi_mask & mask.unsqueeze(-1)
        # Garbage in padded slots must not leak in, not even as NaN * 0 (a batch without padding has none).
        boxes = boxes.float()
        if not bool(valid.all()):
            boxes, rois = boxes.masked_fill(~valid.unsqueeze(-1), 0.0), rois.masked_fill(~valid.unsqueeze(-1), 0.0)
        h = self._nodes(x, mask, rois, boxes, valid)
        graphs = self._graphs(boxes, valid)
        for layer in self.layers:
            h = layer(h, valid, graphs)
        count = valid.flatten(1).sum(1, keepdim=True).clamp_min(1).to(h.dtype)
        feat = h.flatten(1, 2).sum(1) / count
        if self.global_branch:
            pooled = torch.where(mask.unsqueeze(-1), x, torch.zeros_like(x)).sum(1)
            pooled = pooled / mask.sum(1, keepdim=True).clamp_min(1).to(x.dtype)
            feat = torch.cat([feat, pooled.to(feat.dtype)], dim=-1)
        return self.fc(self.dropout(feat))

    def _nodes(self, x: Tensor, mask: Tensor, rois: Tensor, boxes: Tensor, valid: Tensor) -> Tensor:
        """Initial node features ``[B, T, R, hidden]``: each enabled part embedded and normalised on its own, so
        a 2048-d RoI feature cannot drown the few numbers of its box, then summed."""
        h = torch.zeros(*valid.shape, self.hidden, dtype=x.dtype, device=x.device)
        if self.appearance:
            look = self.reduce(rois)
            if self.training and self.drop_appearance:
                kept = torch.rand(look.shape[0], device=look.device) >= self.drop_appearance
                look = look * kept[:, None, None, None].to(look.dtype)
            h = h + look
        if self.box_embedding:
            h = h + self.geometry_norm(self.geometry(box_geometry(boxes, valid, self.centred_boxes))).to(h.dtype)
        if hasattr(self, "time"):
            h = h + self.time(step_positions(mask, TIME_FREQUENCIES)).unsqueeze(2).to(h.dtype)
        return h * valid.unsqueeze(-1).to(h.dtype)

    def _graphs(self, boxes: Tensor, valid: Tensor) -> RegionGraphs:
        graphs = RegionGraphs()
        if self.spatiotemporal:
            graphs.forward, graphs.backward = temporal_graphs(boxes, valid)
        if self.relation:
            graphs.relation = relation_graph(valid)
        if hasattr(self, "edges"):
            zeros = boxes.new_zeros(boxes.shape[0], 1, boxes.shape[2], boxes.shape[2], 5)
            edges = {  # box i at t -> box j at t+1 (forward), at t-1 (backward), at t (relation)
                "forward": torch.cat([relative_geometry(boxes[:, :-1], boxes[:, 1:]), zeros], dim=1),
                "backward": torch.cat([zeros, relative_geometry(boxes[:, 1:], boxes[:, :-1])], dim=1),
                "relation": relative_geometry(boxes, boxes),
            }
            for name, geometry in edges.items():
                graph = getattr(graphs, name)
                if graph is not None:
                    # sum_j G_ij phi(e_ij) as a broadcast product: einsum picks a batched product of 1 x R rows
                    messages = (graph.unsqueeze(-1) * self.edges(geometry)).sum(-2)
                    setattr(graphs, f"{name}_edges", messages)
        return graphs
