# Semantic FPN with a DFFormer-S18 backbone on ADE20K: the DFFormer paper's segmentation setup
# (Tatsunami & Taki, AAAI 2024; okojoalg/dfformer@11f8c7b segmentation/configs/fpn/
# dfformer_s18_fpn.py), written for mmsegmentation 1.x with the backbone from tokenmix.
#
# Needs: pip install 'tokenmix[mm]' (mmsegmentation >= 1.0, mmengine, mmcv) and ADE20K in
# data/ade/ADEChallengeData2016 (mmseg's layout). Run on 8 GPUs (4 images each, 32 per step):
#
#   mim train mmseg docs/examples/mmseg_dfformer_s18_fpn.py --gpus 8 --launcher pytorch
#
# Expected result: the paper's ADE20K Semantic FPN mIoU for DFFormer-S18 (single scale, 40k
# iterations). This file is not run by the tests (mmseg is not installed there); it is checked
# only for its structure (tests/test_segmentation.py).
#
# What the backbone does (tokenmix.models.segmentation.create_backbone): DFFormer-S18 built at
# 512x512 with features_only=True and feature_norms=True, the official fork_feat backbone (one
# LayerNorm, eps 1e-6, per output stage); the ImageNet-1k weights are downloaded, their filters
# resized to 512x512, the classifier's norm and head dropped, the feature norms left at their
# initialisation. Importing tokenmix.models.segmentation registers "TokenMixBackbone" with
# mmseg's MODELS registry (custom_imports below).

_base_ = [
    "mmseg::_base_/datasets/ade20k.py",
    "mmseg::_base_/default_runtime.py",
    "mmseg::_base_/schedules/schedule_40k.py",
]
custom_imports = dict(imports=["tokenmix.models.segmentation"], allow_failed_imports=False)

crop_size = (512, 512)
norm_cfg = dict(type="SyncBN", requires_grad=True)
data_preprocessor = dict(
    type="SegDataPreProcessor",
    mean=[123.675, 116.28, 103.53],  # the ImageNet mean / std the weights were trained with
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size,
)
model = dict(
    type="EncoderDecoder",
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type="TokenMixBackbone",
        model_name="dfformer_s18",  # or cdfformer_s18, dfformer_s36, dfformer_m36, ...
        pretrained=True,  # tokenmix's published ImageNet-1k weights (or a checkpoint path)
        img_size=crop_size,
        out_indices=(0, 1, 2, 3),
    ),
    neck=dict(type="FPN", in_channels=[64, 128, 320, 512], out_channels=256, num_outs=4),
    decode_head=dict(
        type="FPNHead",
        in_channels=[256, 256, 256, 256],
        in_index=[0, 1, 2, 3],
        feature_strides=[4, 8, 16, 32],
        channels=128,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)

train_dataloader = dict(batch_size=4, num_workers=2)

# The official recipe: AdamW, lr 2e-4, weight decay 1e-4, poly decay (power 0.9) over 40k steps.
optim_wrapper = dict(
    _delete_=True,
    type="OptimWrapper",
    optimizer=dict(type="AdamW", lr=2e-4, weight_decay=1e-4),
)
param_scheduler = [
    dict(type="PolyLR", power=0.9, eta_min=0.0, begin=0, end=40000, by_epoch=False),
]

# For COCO (mmdetection 3.x) the same backbone goes into RetinaNet / Mask R-CNN configs:
#   backbone=dict(type="TokenMixBackbone", model_name="dfformer_s18", pretrained=True,
#                 img_size=(800, 800), out_indices=(1, 2, 3))  # RetinaNet: official FORK_LAST3
#   neck=dict(type="FPN", in_channels=[128, 320, 512], out_channels=256, start_level=0,
#             add_extra_convs="on_input", num_outs=5)
# with custom_imports as above (it registers with mmdet's MODELS too when mmdet is imported).
