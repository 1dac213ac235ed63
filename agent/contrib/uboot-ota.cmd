# ota A/B slot selection for U-Boot (hush shell).
#
# It reads the variables ota-agent writes with fw_setenv (agent/src/boot/uboot.rs) and
# makes the same decision as ota_agent::boot::decide_boot:
#   - if OTA_TRY names a slot and OTA_TRIES_LEFT > 0: decrement OTA_TRIES_LEFT, boot OTA_TRY;
#   - otherwise boot OTA_DEFAULT (A when unset).
# OTA_BOOTED records the slot chosen. saveenv runs only when a try is counted down or the
# chosen slot changes, so a confirmed system boots without flash writes. The kernel gets
# ota.slot=A|B on its command line.
#
# Build:  mkimage -A arm64 -T script -C none -d uboot-ota.cmd boot.scr
# Needs CONFIG_CMD_SETEXPR and an environment location that matches the device's
# fw_env.config (a redundant environment is recommended). setexpr computes in hex, exact
# for single digits only, which is why ota-agent allows at most 9 tries.
# Adapt the partition numbers, load addresses and kernel paths to your board.

if test "${OTA_DEFAULT}" != "B"; then
  setenv OTA_DEFAULT A
fi
setenv ota_slot ${OTA_DEFAULT}
setenv ota_save

if test "${OTA_TRY}" = "A" || test "${OTA_TRY}" = "B"; then
  if test -n "${OTA_TRIES_LEFT}" && test ${OTA_TRIES_LEFT} -gt 0; then
    setexpr OTA_TRIES_LEFT ${OTA_TRIES_LEFT} - 1
    setenv ota_slot ${OTA_TRY}
    setenv ota_save 1
  fi
fi

if test "${OTA_BOOTED}" != "${ota_slot}"; then
  setenv OTA_BOOTED ${ota_slot}
  setenv ota_save 1
fi
if test -n "${ota_save}"; then
  setenv ota_save
  saveenv
fi

if test "${ota_slot}" = "B"; then
  setenv ota_part 3
else
  setenv ota_part 2
fi
setenv bootargs "${bootargs} root=/dev/mmcblk0p${ota_part} rootwait ro ota.slot=${ota_slot}"
load mmc 0:${ota_part} ${kernel_addr_r} /boot/Image
load mmc 0:${ota_part} ${fdt_addr_r} /boot/${fdtfile}
booti ${kernel_addr_r} - ${fdt_addr_r}
