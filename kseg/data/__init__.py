"""Reading a competition's files: layouts, images and masks, labels from runs tables, the mask scan, groups, folds, the
audit and raster tiles.
"""
