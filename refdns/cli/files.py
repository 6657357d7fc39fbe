"""import, export, compress, decompress, thin: weight files in and out (.npz, safetensors, .caffemodel, .rdc),
and a structured-pruned net cut down to its kept units."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from refdns import __version__, checkpoint
from refdns.atomic import check_inputs, check_outputs
from refdns.cli.common import NATURAL, POSITIVE, _bits, _output_args, write_json
from refdns.errors import ConfigError
from refdns.nets import get_spec


def cmd_import(args) -> int:
    from refdns.interchange import read_weights
    from refdns.run import TrainConfig, new_run

    check_inputs({"weights": args.weights})
    check_outputs({"--out": args.out}, inputs={"weights": args.weights}, force=args.force)
    spec = get_spec(args.net)
    if args.batch_size > args.n_train:
        raise ConfigError(f"--batch-size {args.batch_size} is larger than --n-train {args.n_train}")
    found = read_weights(args.weights, spec)  # the format is read from the file's content, not its suffix
    masks, source = found.masks, f"masks from the file ({found.layout})"
    if masks is None:
        masks = {k: w != 0 for k, w in found.params.items()} if args.mask_from_zeros else None
        source = "mask from the zero pattern" if args.mask_from_zeros else "all-ones masks"
    state = new_run(spec, args.n_train, TrainConfig(batch_size=args.batch_size), seed=args.seed,
                    params=found.params, masks=masks)
    config = {"net": spec.name, "seed": args.seed, "imported_from": str(args.weights),
              "format": found.format, "layout": found.layout, "mask_from_zeros": bool(args.mask_from_zeros)}
    checkpoint.save(args.out, state, method="import", config=config)
    kept = sum(int(np.count_nonzero(m)) for m in state.masks.values())
    print(f"imported {args.weights} ({found.format}, {found.layout}) into {args.out}: {spec.name}, "
          f"{kept:,} of {spec.n_params():,} parameters kept ({source})")
    return 0


def cmd_export(args) -> int:
    from refdns.interchange import write_npz, write_safetensors
    from refdns.run import effective_params

    check_inputs({"checkpoint": args.checkpoint})
    check_outputs({"--out": args.out}, inputs={"checkpoint": args.checkpoint}, force=args.force)
    suffix = Path(str(args.out)).suffix
    fmt = args.format or {".safetensors": "safetensors", ".caffemodel": "caffemodel"}.get(suffix, "npz")
    if args.torch_prune and fmt != "safetensors":
        raise ConfigError("--torch-prune writes torch.nn.utils.prune's layout, a safetensors layout: add "
                          "--format safetensors")
    st = checkpoint.load(args.checkpoint).state
    params = st.params if args.raw or args.torch_prune else effective_params(st.params, st.masks)
    if fmt == "npz":
        write_npz(args.out, params)
    elif fmt == "caffemodel":  # raw W and b plus the DNS layers' mask blobs: what `caffe train --weights` loads
        from refdns.caffe.proto import params_to_caffemodel, write_caffemodel

        write_caffemodel(args.out, params_to_caffemodel(st.params, st.spec.layer_names, st.masks),
                         name=st.spec.name)
    else:
        layout = "torch-prune" if args.torch_prune else "plain"
        meta = {"producer": f"refdns {__version__}", "net": st.spec.name, "layout": layout}
        write_safetensors(args.out, params, st.masks if args.torch_prune else None, metadata=meta)
    what = ("W as <layer>.weight_orig and T as <layer>.weight_mask (torch.nn.utils.prune)" if args.torch_prune
            else "blobs W, b, W mask, b mask per layer (the DNS fork's CInnerProduct/CConvolution)"
            if fmt == "caffemodel"
            else "raw W (pruned entries keep their values)" if args.raw
            else "W * mask (pruned entries are 0)")
    print(f"exported {args.checkpoint} ({st.spec.name}) to {args.out} ({fmt}): {what}")
    return 0


def cmd_compress(args) -> int:
    from refdns.compress import format_report
    from refdns.netfiles import compress_checkpoint

    check_inputs({"checkpoint": args.checkpoint})
    check_outputs({"--out": args.out, "--json": args.json}, inputs={"checkpoint": args.checkpoint},
                  force=args.force)
    layers, rows = compress_checkpoint(args.checkpoint, args.out, bits=_bits(args.bits))
    total = rows[-1]
    print(format_report(rows, title=f"{args.checkpoint} -> {args.out}"))
    print(f"{args.out}: {total['rdc_bytes']:,} bytes, {total['ratio_rdc']:.1f}x smaller than the dense "
          f"float32 net ({total['dense_bytes']:,} bytes)")
    if args.json:
        write_json(args.json, {"checkpoint": str(args.checkpoint), "out": str(args.out),
                               "bits": {la.name: la.bits for la in layers}, "layers": rows})
    return 0


def cmd_decompress(args) -> int:
    from refdns.netfiles import decompress_to_checkpoint

    check_inputs({"rdc": args.rdc})
    check_outputs({"--out": args.out}, inputs={"rdc": args.rdc}, force=args.force)
    state = decompress_to_checkpoint(args.rdc, args.out)
    kept = sum(int(np.count_nonzero(m)) for m in state.masks.values())
    print(f"decompressed {args.rdc} into {args.out}: {state.spec.name}, {kept:,} of "
          f"{state.spec.n_params():,} parameters kept, quantised weights exactly as stored")
    return 0


def cmd_thin(args) -> int:
    from refdns.netfiles import thin_checkpoint

    check_inputs({"checkpoint": args.checkpoint})
    check_outputs({"--out": args.out, "--json": args.json}, inputs={"checkpoint": args.checkpoint},
                  force=args.force)
    state, report = thin_checkpoint(args.checkpoint, args.out)
    print("| layer | units before | units after | parameters before | parameters after |")
    print("|---|---:|---:|---:|---:|")
    for r in report.layers:
        print(f"| {r.layer} | {r.units_before:,} | {r.units_after:,} | {r.params_before:,} "
              f"| {r.params_after:,} |")
    print(f"{args.out}: {report.message}" + ("" if report.changed else " (written as it was)"))
    if args.json:
        write_json(args.json, {"checkpoint": str(args.checkpoint), "out": str(args.out),
                               "changed": report.changed, "net": report.net, "thinned_net": report.thinned_net,
                               "params_before": report.params_before, "params_after": report.params_after,
                               "layers": [dataclasses.asdict(r) for r in report.layers],
                               "message": report.message})
    return 0


def add_commands(command, nets) -> None:
    """Register this module's subcommands (``command(name, func, help)`` makes a subparser)."""
    p = command("import", cmd_import, "make a checkpoint from a weight file: .npz, safetensors (plain or "
                "torch.nn.utils.prune's weight_orig/weight_mask) or .caffemodel, recognised by content")
    p.add_argument("weights", help="weight file with <layer>.weight and <layer>.bias in Caffe layouts")
    p.add_argument("--net", required=True, choices=nets, help="the network (Caffe layer names and layouts)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="checkpoint to write")
    p.add_argument("--mask-from-zeros", action="store_true",
                   help="mask = the non-zero pattern of the weights, for a file without masks (torch.prune "
                   "masks and Caffe DNS mask blobs are always used)")
    p.add_argument("--seed", type=NATURAL, default=0, help="seeds the batch order and mask draws of a later run")
    p.add_argument("--batch-size", type=POSITIVE, default=64, help="batch size the batch order is drawn for")
    p.add_argument("--n-train", type=POSITIVE, default=60_000, help="training-set size the batch order is drawn for")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p = command("export", cmd_export,
                "write a checkpoint's weights as .npz, safetensors or a .caffemodel the DNS authors' Caffe starts from")
    p.add_argument("checkpoint", help="HDF5 checkpoint")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="weight file to write")
    p.add_argument("--format", choices=["npz", "safetensors", "caffemodel"], default=None,
                   help="file format (unset: by the name's suffix, .safetensors or .caffemodel, else npz)")
    p.add_argument("--raw", action="store_true", help="export W itself instead of W * mask")
    p.add_argument("--torch-prune", action="store_true", help="safetensors in torch.nn.utils.prune's layout: "
                   "<layer>.weight_orig (raw W) and <layer>.weight_mask (T), likewise for biases")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p = command("compress", cmd_compress, "Deep Compression of a pruned checkpoint: weight sharing and "
                "Huffman coding into an .rdc file")
    p.add_argument("checkpoint", help="HDF5 checkpoint (pruned or dense)")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help=".rdc file to write")
    p.add_argument("--bits", help="cluster-index bits: one number for every layer, or group/layer=bits,... "
                   "with groups all, conv, fc (unset: conv=8,fc=5, the paper's)")
    _output_args(p, json_help="also write the per-layer byte report as JSON")
    p = command("decompress", cmd_decompress,
                "an .rdc file back into an HDF5 checkpoint (the quantised weights)")
    p.add_argument("rdc", help=".rdc file written by refdns compress")
    p.add_argument("-o", "--out", required=True, metavar="FILE", help="checkpoint to write")
    p.add_argument("--force", action="store_true", help="overwrite the output file if it exists")
    p = command("thin", cmd_thin, "cut fully pruned filters and neurons (and the inputs reading them) out "
                "of a checkpoint: a smaller dense net with the same predictions, loadable by every command")
    p.add_argument("checkpoint", help="HDF5 checkpoint, usually of a structured pruning run")
    p.add_argument("-o", "--out", required=True, metavar="FILE",
                   help="checkpoint of the thinned net to write")
    _output_args(p, json_help="also write the per-layer units and parameters as JSON")
