r1 = my_map ll
r2 = map_fd(other) ll
r3 = map_value(cfg, 4) ll
r4 = const(base) ll
r5 = port
w6 = const(uid)
if w6 == uid goto +1
*(u32 *)(r10 - 4) = mark
exit
