//! GPIO through embedded-hal 1.0: an LED lit while a chosen class is seen, and a button that
//! triggers classification. Generic over the pin traits, so tests use embedded-hal-mock and the
//! board uses linux-embedded-hal's `CdevPin` (cargo feature `gpio`).

use embedded_hal::digital::{InputPin, OutputPin};

/// Lights `pin` while `class` is the top-1 prediction with at least `min_score`.
pub struct ClassLed<P> {
    pin: P,
    class: u32,
    min_score: f32,
    lit: bool,
}

impl<P: OutputPin> ClassLed<P> {
    /// Starts with the LED off.
    pub fn new(mut pin: P, class: u32, min_score: f32) -> Result<Self, P::Error> {
        pin.set_low()?;
        Ok(ClassLed {
            pin,
            class,
            min_score,
            lit: false,
        })
    }

    /// Updates the LED from the ranked predictions (best first); touches the pin only on change.
    /// Returns whether the LED is lit.
    pub fn update(&mut self, top: &[(u32, f32)]) -> Result<bool, P::Error> {
        let seen = top
            .first()
            .is_some_and(|&(c, s)| c == self.class && s >= self.min_score);
        if seen != self.lit {
            if seen {
                self.pin.set_high()?;
            } else {
                self.pin.set_low()?;
            }
            self.lit = seen;
        }
        Ok(self.lit)
    }

    pub fn release(self) -> P {
        self.pin
    }
}

/// A push button; `pressed()` is true once per press (on the edge), debounced by polling.
pub struct Button<P> {
    pin: P,
    active_low: bool,
    was_down: bool,
}

impl<P: InputPin> Button<P> {
    pub fn new(pin: P, active_low: bool) -> Self {
        Button {
            pin,
            active_low,
            was_down: false,
        }
    }

    fn down(&mut self) -> Result<bool, P::Error> {
        Ok(if self.active_low {
            self.pin.is_low()?
        } else {
            self.pin.is_high()?
        })
    }

    /// True on the poll where the button goes down.
    pub fn pressed(&mut self) -> Result<bool, P::Error> {
        let down = self.down()?;
        let edge = down && !self.was_down;
        self.was_down = down;
        Ok(edge)
    }

    pub fn release(self) -> P {
        self.pin
    }
}

/// Opens lines of a GPIO character device (`/dev/gpiochipN`) as embedded-hal pins.
#[cfg(feature = "gpio")]
pub mod cdev {
    use anyhow::{Context, Result};
    use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
    use linux_embedded_hal::CdevPin;

    pub fn output(chip: &str, line: u32) -> Result<CdevPin> {
        let mut c = Chip::new(chip).with_context(|| format!("cannot open GPIO chip {chip}"))?;
        let h = c
            .get_line(line)
            .and_then(|l| l.request(LineRequestFlags::OUTPUT, 0, "device-led"))
            .with_context(|| format!("cannot claim {chip} line {line} as an output"))?;
        CdevPin::new(h).with_context(|| format!("{chip} line {line}"))
    }

    pub fn input(chip: &str, line: u32) -> Result<CdevPin> {
        let mut c = Chip::new(chip).with_context(|| format!("cannot open GPIO chip {chip}"))?;
        let h = c
            .get_line(line)
            .and_then(|l| l.request(LineRequestFlags::INPUT, 0, "device-button"))
            .with_context(|| format!("cannot claim {chip} line {line} as an input"))?;
        CdevPin::new(h).with_context(|| format!("{chip} line {line}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal_mock::eh1::digital::{Mock, State, Transaction as T};

    #[test]
    fn led_follows_the_chosen_class_and_only_toggles_on_change() {
        let pin = Mock::new(&[T::set(State::Low), T::set(State::High), T::set(State::Low)]);
        let mut led = ClassLed::new(pin, 281, 0.5).unwrap();
        assert!(!led.update(&[(3, 0.9)]).unwrap());
        assert!(led.update(&[(281, 0.8), (3, 0.1)]).unwrap());
        assert!(
            led.update(&[(281, 0.7)]).unwrap(),
            "still lit: no pin write"
        );
        assert!(!led.update(&[(281, 0.4)]).unwrap(), "below the threshold");
        assert!(!led.update(&[]).unwrap());
        led.release().done();
    }

    /// The real character-device pins (`--features gpio`): a chip that is not there is an error
    /// naming it (CI machines have no GPIO chip; boards are tested by deploy).
    #[cfg(feature = "gpio")]
    #[test]
    fn a_missing_gpio_chip_is_a_clear_error() {
        let e = cdev::output("/dev/gpiochip-nope", 17).err().map(|e| format!("{e:#}"));
        assert!(e.as_deref().is_some_and(|e| e.contains("cannot open GPIO chip /dev/gpiochip-nope")), "{e:?}");
        let e = cdev::input("/dev/null", 4).err().map(|e| format!("{e:#}"));
        assert!(e.is_some(), "/dev/null is no GPIO chip");
    }

    #[test]
    fn button_reports_each_press_once() {
        let pin = Mock::new(&[
            T::get(State::High),
            T::get(State::Low),
            T::get(State::Low),
            T::get(State::High),
            T::get(State::Low),
        ]);
        let mut b = Button::new(pin, true);
        let presses: Vec<bool> = (0..5).map(|_| b.pressed().unwrap()).collect();
        assert_eq!(presses, [false, true, false, false, true]);
        b.release().done();
    }
}
